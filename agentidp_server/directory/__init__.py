"""Organisations, agents, credentials and scopes."""
