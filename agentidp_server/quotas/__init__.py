"""Rate limits, tier limits and usage counters."""
