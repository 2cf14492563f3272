"""Sphinx configuration: furo theme, API pages from the package's docstrings."""

from __future__ import annotations

import sys
from pathlib import Path

# Document the package from this checkout, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flask_sse_keepalive

project = "flask-sse-keepalive"
author = "the flask-sse-keepalive authors"
copyright = "2026, the flask-sse-keepalive authors"
release = flask_sse_keepalive.__version__
version = release

extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build", "snippets"]
# The docs build with -W in CI and offline: no intersphinx inventories to fetch.

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# The metrics module needs the ``metrics`` extra; the docs build needs only ``docs``.
autodoc_mock_imports = ["prometheus_client"]

html_theme = "furo"
html_title = f"flask-sse-keepalive {release}"
