"""Utilities on top of the core API, under Ray's names."""
