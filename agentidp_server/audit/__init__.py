"""The hash-chained audit log, its delivery to consumers, integrity and checkpoints."""
