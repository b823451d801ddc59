"""Causerie outbound package."""
