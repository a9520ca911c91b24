"""The capture gateway: an OpenAI-compatible proxy that records every exchange off the request path."""
