"""The executor side: the gateway (key, budget, cache, retries, limits, usage) and its backends."""
