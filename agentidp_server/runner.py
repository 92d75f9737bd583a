"""`agentidp serve`: hypercorn (or uvicorn) underneath, with a supervisor that
drains every worker.

hypercorn's own multi-worker master returns when the first worker exits and
terminates the rest, dropping their in-flight requests (PITFALLS.md). Here the
master forwards shutdown to every worker through one event and waits for all
of them, so each finishes its requests before the process exits 0. A worker that
dies while serving is restarted with backoff (issue 25 item 3); a failure to start
is one line on stderr, the runbook's `Failed to start server: Error: ...` (issue 15).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.utils import wrap_app

from agentidp_server.server.body_timeout import BodyReadTimeout
from agentidp_server.server.logs import configure_logging
from agentidp_server.server.metrics import MultiprocessDir, metrics_bind
from agentidp_server.server.startup import FAILED, StartupError, port_in_use

log = logging.getLogger("agentidp")

SHUTDOWN_LINE = "Shutting down gracefully..."
# A replacement that dies before it is ready this many times in a row stops the server.
MAX_START_FAILURES = 5
RESTART_BACKOFF_FIRST = 0.5
RESTART_BACKOFF_MAX = 30.0
RESTARTS_METRIC = "agentidp_worker_restarts"


def hypercorn_config(settings: Any) -> Config:
    config = Config()
    config.bind = [f"{settings.HOST}:{settings.PORT}"]
    if extra := metrics_bind(settings):  # METRICS_PORT: /metrics on its own listener
        config.bind.append(extra)
    config.graceful_timeout = float(settings.GRACEFUL_TIMEOUT)
    config.accesslog = None  # the app writes its own access lines with request ids
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 5
    # No read_timeout: hypercorn applies it to every read, so it would also cut a client
    # waiting quietly for a slow response; BodyReadTimeout bounds the body instead.
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

    from agentidp_server.server.coalescing import CoalescingHttpToolsProtocol

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
    # uvicorn's own lines ("Application startup failed") go where ours go, not to stderr.
    ours = logging.getLogger("agentidp")
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = list(ours.handlers)
        logging.getLogger(name).propagate = False

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
    from agentidp_server.app import STARTUP_ERROR, create_app

    app = create_app(settings)
    # Quart logs the startup exception with its traceback; the runner prints one line.
    app.logger.addFilter(lambda _: STARTUP_ERROR not in app.extensions)
    if on_ready is not None:
        app.before_serving(on_ready)
    # Slow-loris bound (issue 25 item 7): the whole body within REQUEST_READ_TIMEOUT.
    guarded: Any = BodyReadTimeout(app, float(settings.REQUEST_READ_TIMEOUT))
    try:
        if settings.SERVER == "uvicorn":
            await _serve_uvicorn(guarded, settings, sockets, shutdown)
            return
        config = hypercorn_config(settings)
        # worker_serve (not serve): it takes the sockets bound before the workers started.
        await worker_serve(
            wrap_app(guarded, config.wsgi_max_body_size, None),
            config,
            sockets=sockets,
            shutdown_trigger=shutdown.wait,
        )
    except (Exception, SystemExit) as error:
        if STARTUP_ERROR in app.extensions:
            raise StartupError(app.extensions[STARTUP_ERROR]) from None
        if isinstance(error, SystemExit):
            raise StartupError("the server stopped during startup") from None
        raise


def _bind(settings: Any) -> Sockets:
    config = hypercorn_config(settings)
    try:
        sockets = config.create_sockets()
        # Listen now, not when the server starts after the app's startup: a client that
        # connects right after "AgentIdP listening" is queued, never refused.
        for sock in sockets.insecure_sockets:
            sock.listen(config.backlog)
    except OSError as error:
        raise StartupError(port_in_use(settings, error)) from None
    return sockets


def listening_line(settings: Any, sockets: Sockets, workers: int = 1) -> str:
    """The runbook's `AgentIdP listening on port N`, with the address actually bound."""
    host, port = sockets.insecure_sockets[0].getsockname()[:2]
    where = "all interfaces" if host in ("0.0.0.0", "::") else "this address only"  # noqa: S104
    shown = f"[{host}]" if ":" in host else host
    extra = f", {workers} workers" if workers > 1 else ""
    return f"AgentIdP listening on port {port} (http://{shown}:{port}, {where}{extra})"


def run_single(settings: Any) -> int:
    """One process: the recommended shape for a container/pod."""
    sockets = _bind(settings)

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
            log.info("%s", listening_line(settings, sockets))

        await _serve(settings, sockets, shutdown, ready)

    try:
        with _event_loop_runner(settings) as runner:
            runner.run(main())
    finally:
        _close(sockets)
    return 0


def _worker(overrides: dict[str, Any], sockets: Sockets, channel: Connection) -> None:
    """One supervised worker process (started with the `spawn` method).

    It talks to the master over its own pipe only ("ready", an error line; "stop"
    or EOF back): a shared multiprocessing Event or Queue has a lock that a worker
    killed with SIGKILL may die holding, which then hangs every other process.
    """
    from agentidp_server.settings import load_settings

    # The master handles Ctrl-C for the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = load_settings(overrides=overrides)
    configure_logging(settings)

    async def main() -> None:
        event = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_message() -> None:
            # "stop", or EOF when the master is gone: either way, drain and exit.
            loop.remove_reader(channel.fileno())
            event.set()

        async def on_ready() -> None:
            channel.send(("ready", ""))

        loop.add_reader(channel.fileno(), on_message)
        await _serve(settings, sockets, event, on_ready)

    try:
        with _event_loop_runner(settings) as runner:
            runner.run(main())
    except StartupError as error:
        # The master prints one line for all workers (each would fail the same way).
        with contextlib.suppress(OSError):
            channel.send(("error", str(error)))
        sys.exit(1)


class _Slot:
    """One worker position: the live process, its pipe and restart bookkeeping."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Any = None
        self.channel: Connection | None = None
        self.ready = False
        self.error: str | None = None
        self.start_failures = 0  # consecutive deaths before ready
        self.restart_at: float | None = None

    @property
    def name(self) -> str:
        return f"agentidp-worker-{self.index}"

    def read(self) -> None:
        """Take the worker's messages without blocking."""
        channel = self.channel
        try:
            while channel is not None and channel.poll():
                kind, text = channel.recv()
                if kind == "ready":
                    self.ready = True
                elif kind == "error":
                    self.error = text
        except (EOFError, OSError):
            pass

    def stop(self) -> None:
        if self.channel is not None:
            with contextlib.suppress(OSError):
                self.channel.send(("stop", ""))


def _restart_counter() -> Any:
    """agentidp_worker_restarts_total, written by the master into the multiprocess
    directory that every worker's /metrics aggregates (the master has no registry)."""
    from prometheus_client import values

    value_class = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return value_class(
        "counter",
        RESTARTS_METRIC,
        f"{RESTARTS_METRIC}_total",
        (),
        (),
        "Worker processes the supervisor restarted after they died",
    )


def run_supervised(settings: Any, overrides: dict[str, Any]) -> int:
    # The master builds no app, so nothing else routes its own log lines to stdout.
    configure_logging(settings)
    workers = int(settings.WORKERS)
    sockets = _bind(settings)
    # Before any worker starts: they inherit PROMETHEUS_MULTIPROC_DIR, emptied.
    metrics_dir = MultiprocessDir()
    restarts = _restart_counter()
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def on_signal(*_: Any) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info(SHUTDOWN_LINE)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    slots = [_Slot(i) for i in range(workers)]

    def spawn(slot: _Slot) -> None:
        if slot.channel is not None:
            slot.channel.close()
        ours, theirs = ctx.Pipe()
        slot.channel, slot.ready, slot.error, slot.restart_at = ours, False, None, None
        slot.process = ctx.Process(
            target=_worker, args=(overrides, sockets, theirs), name=slot.name
        )
        slot.process.start()
        theirs.close()  # the worker's end lives in the worker only: EOF when it dies

    for slot in slots:
        spawn(slot)
    failure: str | None = None
    while not stopping:
        for slot in slots:
            slot.read()
        if all(s.ready for s in slots):
            log.info("%s", listening_line(settings, sockets, workers))
            break
        dead = [s for s in slots if s.process.exitcode is not None]
        if dead:
            for slot in dead:
                slot.read()
            errors = [s.error for s in dead if s.error]
            failure = errors[0] if errors else f"worker {dead[0].name} exited during startup"
            break
        time.sleep(0.05)

    while not stopping and failure is None:
        now = time.monotonic()
        for slot in slots:
            slot.read()
            if slot.restart_at is not None:
                if now >= slot.restart_at:
                    spawn(slot)
                continue
            code = slot.process.exitcode
            if code is None:
                continue
            metrics_dir.worker_exited(slot.process.pid)
            if slot.ready:
                slot.start_failures = 0
            else:
                slot.start_failures += 1
                if slot.error:
                    log.error("worker %s failed to start: %s", slot.name, slot.error)
            if slot.start_failures >= MAX_START_FAILURES:
                log.error(
                    "worker %s died %d times in a row before it was ready; stopping",
                    slot.name,
                    slot.start_failures,
                )
                failure = slot.error or f"worker {slot.name} keeps dying at start ({code})"
                break
            delay = min(RESTART_BACKOFF_FIRST * 2**slot.start_failures, RESTART_BACKOFF_MAX)
            log.error(
                "worker %s (pid %s) exited with %s; restarting it in %.1f s",
                slot.name,
                slot.process.pid,
                code,
                delay,
            )
            restarts.inc(1)
            slot.restart_at = now + delay
        time.sleep(0.1)

    # Refuse new connections at once (issue 15): each worker closes its own copy of
    # the listener when told to stop; this one is the master's.
    _close(sockets)
    for slot in slots:
        slot.stop()
    deadline_grace = float(settings.GRACEFUL_TIMEOUT) + 10
    for slot in slots:
        slot.process.join(timeout=deadline_grace)
        if slot.process.is_alive():
            slot.process.terminate()
            slot.process.join(timeout=5)
        metrics_dir.worker_exited(slot.process.pid)
    metrics_dir.close()
    if failure is not None:
        sys.stderr.write(FAILED + failure + "\n")
        return 1
    codes = [s.process.exitcode for s in slots if s.restart_at is None]
    return 1 if not stopping and any(c != 0 for c in codes) else 0


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
    if int(settings.WORKERS) > 1 and not settings.REDIS_URL:
        sys.stderr.write(
            "Failed to start server: Error: several workers need REDIS_URL "
            "(the in-process kv is per process)\n"
        )
        return 1
    try:
        if int(settings.WORKERS) > 1:
            return run_supervised(settings, overrides)
        return run_single(settings)
    except StartupError as error:
        sys.stderr.write(f"{FAILED}{error}\n")
        return 1
