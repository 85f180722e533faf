"""Resilience composed once, around the provider port: breaker, retry with backoff,
per-attempt timeouts. Adapters contain none of it."""
