"""Helpers with no kernel dependencies: ids, JSON forms, task supervision, the clock."""
