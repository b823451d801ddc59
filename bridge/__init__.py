"""Causerie bridge package."""
