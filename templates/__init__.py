"""Jinja2 templates (`email/`, `web/`) and translation catalogues (`locale/`)."""

from pathlib import Path

TEMPLATES_DIR = Path(__file__).resolve().parent

__all__ = ["TEMPLATES_DIR"]
