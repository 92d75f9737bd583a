#!/usr/bin/env python3
"""Move the kernel's flat modules into subpackages by capability (issue 16), mechanically.

Usage: python scripts/relayout.py [REPO_ROOT]   (default: the repository holding this script)

It `git mv`s each module in MOVES that still exists at its old path, creates the new
packages' `__init__.py`, and rewrites every reference to a moved module in the tracked text
files: dotted names (`agentidp_server.audit_dispatch` -> `agentidp_server.audit.dispatch`,
in imports, monkeypatch strings, docs, config), file paths (`agentidp_server/audit_pg.py`)
and `from agentidp_server import audit_pg` forms (kept under the same local name). It then
sorts the touched imports with ruff. It changes no behaviour and may be run again: a module
already moved is skipped, so a second run does nothing. Top-level modules it does not know
are left in place and listed, as are mentions it cannot rewrite safely (a bare `keys.py`
is also cli/keys.py); a bare name no other kernel file has becomes its new path.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = "agentidp_server"

# old module (relative to the package) -> new module. Only entries whose old file exists move.
MOVES: dict[str, str] = {
    # util/: small helpers every capability may use; they import nothing of the kernel.
    "ids": "util.ids",
    "canonical_json": "util.canonical_json",
    "json_codec": "util.json_codec",
    "clock": "util.clock",  # the injectable clock (another branch of issue 16)
    # Supervised tasks: every capability's hooks return them, and settings (which keys'
    # checks sit under) is imported by server/: in server, keys and server would cycle.
    "background": "util.background",
    # storage/: the ports, their adapters and the migration runner over the db port.
    "migrations": "storage.migrations",
    # Group commit of concurrent storage calls; it splits a batch on storage errors, and the
    # redis adapter batches with it: in util it would make util and storage import each other.
    "batching": "storage.batching",
    # server/: HTTP plumbing, logs, metrics, health, OpenAPI, leases,
    # the ASGI wrappers the runner puts around the app, startup failure lines.
    "http": "server.http",
    "request_scope": "server.request_scope",
    "logs": "server.logs",
    "metrics": "server.metrics",
    "health": "server.health",
    "openapi": "server.openapi",
    "leases": "server.leases",
    "body_timeout": "server.body_timeout",
    "coalescing": "server.coalescing",
    "startup": "server.startup",
    # directory/: organisations (tenants), agents, credentials, scopes, the read facade.
    "agents": "directory.agents",
    "credentials": "directory.credentials",
    "tenants": "directory.tenants",
    "scopes": "directory.scopes",
    "directory": "directory.service",
    # keys/: the signing keyring and its rotation.
    "keys": "keys.keyring",
    # audit/: the log, its PostgreSQL append, dispatch to consumers, integrity, checkpoints.
    "audit": "audit.log",
    "audit_pg": "audit.postgres",
    "audit_dispatch": "audit.dispatch",
    "audit_integrity": "audit.integrity",
    "audit_checkpoints": "audit.checkpoints",
    # oauth/: grants and the client cache beside client_lookup; subjects of tokens.
    "grants": "oauth.grants",
    "client_cache": "oauth.client_cache",
    "subjects": "oauth.subjects",  # token subjects that are not local agents (issue 16)
    # quotas/: rate limits, tier limits and usage counters.
    "quotas": "quotas.limits",
}

# Top-level modules that stay: the frame that assembles and runs the capabilities.
STAYS = {
    "__init__",
    "app",
    "idp",
    "settings",
    "hookspecs",
    "plugins",
    "core",  # split into per-capability hooks modules after the move (not mechanical)
    "runner",  # imports app to serve it: it sits above every capability, beside app
    "testing",  # the pytest11 entry point third-party plugins name
    "testkit",
    "views",  # the facade's typed views (issue 16), types every capability may return
    "runtime",  # starts and stops an IdP (storage, observers, migration sets): the frame
}

PACKAGE_DOCS = {
    "util": "Helpers with no kernel dependencies: ids, JSON forms, task supervision, the clock.",
    "server": "HTTP plumbing, logs, metrics, health, OpenAPI and leases.",
    "directory": "Organisations, agents, credentials and scopes.",
    "keys": "The signing keyring: keys in the database, rotation, the JWKS.",
    "audit": "The hash-chained audit log, its delivery to consumers, integrity and checkpoints.",
    "quotas": "Rate limits, tier limits and usage counters.",
}

TEXT_SUFFIXES = {".py", ".md", ".toml", ".cfg", ".ini", ".txt", ".yml", ".yaml", ".sh", ".json"}
# History says what was true then; this script names the old modules on purpose.
SKIP_FILES = {"CHANGELOG.md", ".git-blame-ignore-revs", "scripts/relayout.py"}


def git(root: Path, *args: str) -> str:
    return subprocess.run(  # noqa: S603 (fixed git commands on our own tree)
        ["git", *args],  # noqa: S607
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def old_path(root: Path, module: str) -> Path:
    return root / PACKAGE / (module.replace(".", "/") + ".py")


def active_moves(root: Path) -> dict[str, str]:
    moves = {}
    for old, new in MOVES.items():
        if not old_path(root, old).is_file():
            continue
        if old_path(root, new).exists():
            sys.exit(f"relayout: both {old} and {new} exist; merge them by hand first")
        moves[old] = new
    return moves


def dotted_pattern(moves: dict[str, str]) -> re.Pattern[str]:
    names = "|".join(re.escape(m) for m in sorted(moves, key=len, reverse=True))
    # Not after a word character or dot, not before one: `audit` never matches `audit_pg`.
    return re.compile(rf"(?<![\w.]){PACKAGE}\.({names})(?!\w)")


def path_pattern(moves: dict[str, str]) -> re.Pattern[str]:
    names = "|".join(re.escape(m.replace(".", "/")) for m in sorted(moves, key=len, reverse=True))
    return re.compile(rf"(?<![\w/]){PACKAGE}/({names})\.py(?!\w)")


def rewrite_from_imports(source: str, moves: dict[str, str]) -> str:
    """`from agentidp_server import audit_pg, request_scope as rs` -> one line per module."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        if not node.module.startswith(PACKAGE):
            continue
        prefix = node.module[len(PACKAGE) :].lstrip(".")
        moved, kept = [], []
        for alias in node.names:
            old = f"{prefix}.{alias.name}" if prefix else alias.name
            (moved if old in moves else kept).append((alias, old))
        if not moved:
            continue
        indent = " " * node.col_offset
        out = []
        if kept:
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a, _ in kept)
            out.append(f"{indent}from {node.module} import {names}\n")
        for alias, old in moved:
            parent, _, leaf = f"{PACKAGE}.{moves[old]}".rpartition(".")
            local = alias.asname or alias.name
            suffix = "" if local == leaf else f" as {local}"
            out.append(f"{indent}from {parent} import {leaf}{suffix}\n")
        assert node.end_lineno is not None
        edits.append((node.lineno - 1, node.end_lineno, "".join(out)))
    for start, end, text in sorted(edits, reverse=True):
        tail = lines[end - 1]
        trailing = tail[len(tail.rstrip("\r\n")) :] or "\n"
        lines[start:end] = [text.rstrip("\n") + trailing]
    return "".join(lines)


def text_from_import(match: re.Match[str], moves: dict[str, str]) -> str:
    """A whole line (a statement in a snippet, not a quotation inside other text)."""
    parent, _, leaf = f"{PACKAGE}.{moves[match.group(2)]}".rpartition(".")
    local = match.group(3) or match.group(2)
    alias = "" if local == leaf else f" as {local}"
    return f"{match.group(1)}from {parent} import {leaf}{alias}"


def tracked_text_files(root: Path) -> list[Path]:
    files = []
    for name in git(root, "ls-files").splitlines():
        path = root / name
        if name in SKIP_FILES or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES or (name.startswith("scripts/") and not path.suffix):
            files.append(path)
    return files


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    root = root.resolve()
    moves = active_moves(root)
    top = {p.stem for p in (root / PACKAGE).glob("*.py")}
    unknown = sorted(top - STAYS - set(MOVES))
    for name in unknown:
        print(f"relayout: warning: {PACKAGE}/{name}.py is not in the layout; left in place")
    if not moves:
        print("relayout: nothing to move")
        return 0

    dotted, paths = dotted_pattern(moves), path_pattern(moves)
    names = "|".join(re.escape(m) for m in sorted(moves, key=len, reverse=True))
    text_import = re.compile(
        rf"^(\s*)from {PACKAGE} import ({names})(?: as (\w+))?(?=[ \t]*(?:#.*)?$)", re.MULTILINE
    )
    # A bare `audit_pg.py` in prose is rewritten only where no other kernel file has that name.
    basenames = [p.name for p in (root / PACKAGE).rglob("*.py")]
    unique = {old: new for old, new in moves.items() if basenames.count(f"{old}.py") == 1}
    bare_unique = re.compile(
        r"(?<![\w/.])(" + "|".join(re.escape(m) for m in unique) + r")\.py(?!\w)"
    )
    touched_py = []
    for path in tracked_text_files(root):
        text = path.read_text(encoding="utf-8")
        new = dotted.sub(lambda m: f"{PACKAGE}.{moves[m.group(1)]}", text)
        new = paths.sub(lambda m: f"{PACKAGE}/{moves[m.group(1)].replace('.', '/')}.py", new)
        if unique:
            new = bare_unique.sub(lambda m: unique[m.group(1)].replace(".", "/") + ".py", new)
        if path.suffix == ".py":
            new = rewrite_from_imports(new, moves)
            for node in ast.walk(ast.parse(new)):
                if isinstance(node, ast.ImportFrom) and node.level:
                    print(f"relayout: warning: relative import in {path.relative_to(root)}")
        # The same statement as text on a line of its own: `python -c` snippets, docs.
        new = text_import.sub(lambda m: text_from_import(m, moves), new)
        if new != text:
            path.write_text(new, encoding="utf-8")
            if path.suffix == ".py":
                touched_py.append(path)

    for old, new in sorted(moves.items()):
        target = old_path(root, new)
        package_dir = target.parent
        if not package_dir.is_dir():
            package_dir.mkdir(parents=True)
        init = package_dir / "__init__.py"
        if not init.exists():
            doc = PACKAGE_DOCS.get(package_dir.name, f"The {package_dir.name} capability.")
            init.write_text(f'"""{doc}"""\n', encoding="utf-8")
            git(root, "add", str(init.relative_to(root)))
        git(root, "mv", str(old_path(root, old).relative_to(root)), str(target.relative_to(root)))
        touched_py.append(target)
        print(f"relayout: {PACKAGE}.{old} -> {PACKAGE}.{new}")

    # Moved names sort differently: let ruff order the imports (no other change).
    existing = [str(p) for p in touched_py if p.exists()]
    ruff = [sys.executable, "-m", "ruff"]
    subprocess.run([*ruff, "check", "--select", "I", "--fix", "-q", *existing], cwd=root)  # noqa: S603
    subprocess.run([*ruff, "format", "-q", *existing], cwd=root)  # noqa: S603

    bare = re.compile(r"(?<![\w/.])(" + "|".join(re.escape(m) for m in moves) + r")\.py\b")
    for path in tracked_text_files(root):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in bare.finditer(line):
                rel = path.relative_to(root)
                print(f"relayout: check by hand: {rel}:{number} names {match.group(0)}")
    # A longer dotted name can push a line past the limit: ruff names it, a person rewraps it.
    subprocess.run([*ruff, "check", "-q", "."], cwd=root)  # noqa: S603
    return 0


if __name__ == "__main__":
    sys.exit(main())
