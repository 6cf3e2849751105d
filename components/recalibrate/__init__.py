"""The recalibrate step."""
