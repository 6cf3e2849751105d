"""The ingest step."""
