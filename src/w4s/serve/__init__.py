"""`w4s serve`: champion workflows behind an OpenAI-compatible HTTP API (see docs/serve.md)."""
