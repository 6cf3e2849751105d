"""Transaction data: schema, synthetic generator with drift scenarios, and validation."""
