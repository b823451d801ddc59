"""Causerie archive package."""
