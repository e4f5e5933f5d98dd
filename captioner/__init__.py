"""captioner's public Python API for callers of the service: `captioner.client` (it never imports torch)."""
