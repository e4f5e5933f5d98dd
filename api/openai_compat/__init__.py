"""The OpenAI-compatible endpoints: the same jobs, tenants and limits as the native API, in OpenAI's shapes, so
that code written for the official SDK works by changing its `base_url` and key (docs/openai.md)."""
