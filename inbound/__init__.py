"""Causerie inbound package."""
