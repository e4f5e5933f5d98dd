"""Bulk captioning on the worker: plan (list the bucket into chunks), caption chunks, write the manifest."""
