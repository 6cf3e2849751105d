"""Features: windowed entity aggregates (Feast) and request-time features, shared by training and serving."""
