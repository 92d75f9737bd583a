"""Storage ports (db, kv) and their adapters; see DESIGN.md "Ports and adapters"."""

from agentidp_server.storage.db import Connection, Database, open_database
from agentidp_server.storage.errors import Conflict, StorageError, StorageUnavailable
from agentidp_server.storage.kv import KV, open_kv

__all__ = [
    "KV",
    "Conflict",
    "Connection",
    "Database",
    "StorageError",
    "StorageUnavailable",
    "open_database",
    "open_kv",
]
