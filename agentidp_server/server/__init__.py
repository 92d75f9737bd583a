"""HTTP plumbing, logs, metrics, health, OpenAPI and leases."""
