"""`agentidp serve`: hypercorn (or uvicorn) underneath, with a supervisor that
drains every worker.

hypercorn's own multi-worker master returns when the first worker exits and
terminates the rest, dropping their in-flight requests (PITFALLS.md). Here the
master forwards shutdown to every worker through one event and waits for all
of them, so each finishes its requests before the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import sys
from collections.abc import Iterator
from multiprocessing.synchronize import Event as EventType
from typing import Any

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.utils import wrap_app

from agentidp_server.logs import configure_logging
from agentidp_server.metrics import MultiprocessDir, metrics_bind

log = logging.getLogger("agentidp")

SHUTDOWN_LINE = "Shutting down gracefully..."


def hypercorn_config(settings: Any) -> Config:
    config = Config()
    config.bind = [f"{settings.HOST}:{settings.PORT}"]
    if extra := metrics_bind(settings):  # METRICS_PORT: /metrics on its own listener
        config.bind.append(extra)
    config.graceful_timeout = float(settings.GRACEFUL_TIMEOUT)
    config.accesslog = None  # the app writes its own access lines with request ids
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 5
    config.workers = int(settings.WORKERS)
    return config


def _event_loop_runner(settings: Any) -> asyncio.Runner:
    """uvloop under uvicorn (part of why it is faster); the standard loop under hypercorn."""
    if settings.SERVER == "uvicorn":
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


async def _serve_uvicorn(
    app: Any, settings: Any, sockets: Sockets, shutdown: asyncio.Event
) -> None:
    import uvicorn

    from agentidp_server.coalescing import CoalescingHttpToolsProtocol

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the runner owns the signals, as under hypercorn

    config = uvicorn.Config(
        app,
        http=CoalescingHttpToolsProtocol,  # httptools, headers and body in one send
        lifespan="on",
        access_log=False,  # the app writes its own access lines with request ids
        log_config=None,
        proxy_headers=False,  # as hypercorn: the peer address is the client's
        server_header=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=int(float(settings.GRACEFUL_TIMEOUT)),
    )
    server = Server(config)

    async def stop_when_asked() -> None:
        await shutdown.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_when_asked())
    try:
        await server.serve(sockets=[*sockets.insecure_sockets])
    finally:
        watcher.cancel()
    if not server.started:
        # uvicorn returns quietly when the app's startup fails; a supervisor must see it.
        raise SystemExit(1)


async def _serve(
    settings: Any,
    sockets: Sockets,
    shutdown: asyncio.Event,
    on_ready: Any = None,
) -> None:
    from agentidp_server.app import create_app

    app = create_app(settings)
    if on_ready is not None:
        app.before_serving(on_ready)
    if settings.SERVER == "uvicorn":
        await _serve_uvicorn(app, settings, sockets, shutdown)
        return
    config = hypercorn_config(settings)
    # worker_serve (not serve): it takes the sockets bound before the workers started.
    await worker_serve(
        wrap_app(app, config.wsgi_max_body_size, None),
        config,
        sockets=sockets,
        shutdown_trigger=shutdown.wait,
    )


def run_single(settings: Any) -> int:
    """One process: the recommended shape for a container/pod."""
    config = hypercorn_config(settings)
    sockets = config.create_sockets()

    async def main() -> None:
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if not shutdown.is_set():
                log.info(SHUTDOWN_LINE)
                shutdown.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)

        async def ready() -> None:
            log.info("AgentIdP listening on port %s", settings.PORT)

        await _serve(settings, sockets, shutdown, ready)

    with _event_loop_runner(settings) as runner:
        runner.run(main())
    _close(sockets)
    return 0


def _worker(overrides: dict[str, Any], sockets: Sockets, shutdown: EventType, ready: Any) -> None:
    """One supervised worker process (started with the `spawn` method)."""
    from agentidp_server.settings import load_settings

    # The master handles Ctrl-C for the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = load_settings(overrides=overrides)
    configure_logging(settings)

    async def main() -> None:
        event = asyncio.Event()

        async def watch() -> None:
            # a multiprocessing Event cannot be awaited; poll it
            while not shutdown.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            event.set()

        async def on_ready() -> None:
            ready.release()

        watcher = asyncio.create_task(watch())
        try:
            await _serve(settings, sockets, event, on_ready)
        finally:
            watcher.cancel()

    with _event_loop_runner(settings) as runner:
        runner.run(main())


def run_supervised(settings: Any, overrides: dict[str, Any]) -> int:
    # The master builds no app, so nothing else routes its own log lines to stdout.
    configure_logging(settings)
    workers = int(settings.WORKERS)
    config = hypercorn_config(settings)
    sockets = config.create_sockets()
    # Before any worker starts: they inherit PROMETHEUS_MULTIPROC_DIR, emptied.
    metrics_dir = MultiprocessDir()
    ctx = multiprocessing.get_context("spawn")
    shutdown = ctx.Event()
    ready = ctx.Semaphore(0)
    stopping = False

    def on_signal(*_: Any) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info(SHUTDOWN_LINE)
        shutdown.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    processes = [
        ctx.Process(
            target=_worker, args=(overrides, sockets, shutdown, ready), name=f"agentidp-worker-{i}"
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()

    started = 0
    while started < workers and not shutdown.is_set():
        if ready.acquire(timeout=0.2):
            started += 1
        elif any(p.exitcode is not None for p in processes):
            log.error("a worker exited during startup; stopping")
            shutdown.set()
    if started == workers:
        log.info("AgentIdP listening on port %s (%d workers)", settings.PORT, workers)

    # Wait for every worker, not just the first to exit: each drains its own requests.
    failed = False
    while any(p.is_alive() for p in processes):
        for process in processes:
            process.join(timeout=0.2)
            if process.exitcode not in (None, 0) and not shutdown.is_set():
                log.error("worker %s exited with %s; stopping", process.name, process.exitcode)
                failed = True
                shutdown.set()
    deadline_grace = float(settings.GRACEFUL_TIMEOUT) + 10
    for process in processes:
        process.join(timeout=deadline_grace)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        metrics_dir.worker_exited(process.pid)
    _close(sockets)
    metrics_dir.close()
    codes = [p.exitcode for p in processes]
    return 1 if failed or (not stopping and any(c != 0 for c in codes)) else 0


def _close(sockets: Sockets) -> None:
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
        sock.close()


def run(settings: Any, overrides: dict[str, Any]) -> int:
    if settings.SERVER == "uvicorn":
        try:
            import httptools  # noqa: F401
            import uvicorn  # noqa: F401
            import uvloop  # noqa: F401
        except ImportError as error:
            sys.stderr.write(
                f"Failed to start server: Error: SERVER=uvicorn needs {error.name}: "
                "pip install 'agentidp-server[fast]'\n"
            )
            return 1
    if int(settings.WORKERS) > 1:
        if not settings.REDIS_URL:
            sys.stderr.write(
                "Failed to start server: Error: several workers need REDIS_URL "
                "(the in-process kv is per process)\n"
            )
            return 1
        return run_supervised(settings, overrides)
    return run_single(settings)
