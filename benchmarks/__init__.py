"""Reproducible benchmarks for wsgi_deferred; run ``python benchmarks/run.py`` (see README.md)."""
