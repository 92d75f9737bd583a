"""The management API (JSON, bearer tokens from this server, scoped per organisation)."""
