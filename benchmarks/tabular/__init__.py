"""The tabular benchmark of issue 15; run ``python -m benchmarks.tabular`` (see ``__main__.py``)."""
