"""Helpers shared by test modules: stacks of real servers, stand-ins, rendered charts, small data sets.

Test modules import from here, never from another test module (a test module imported by another is
collected twice under two names and couples unrelated tests). Nothing here runs at import time beyond
defining constants.
"""
