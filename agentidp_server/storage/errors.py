"""Storage errors the kernel maps to HTTP answers, whatever the adapter."""


class StorageError(Exception):
    """Base class for storage failures."""


class StorageUnavailable(StorageError):
    """A store did not answer in time or refused the connection: the caller gets 503."""

    def __init__(self, component: str, reason: str) -> None:
        super().__init__(f"{component} unavailable: {reason}")
        self.component = component
        self.reason = reason


class Conflict(StorageError):
    """A uniqueness or foreign-key constraint refused the write."""
