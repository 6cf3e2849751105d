"""The features step."""
