"""Shared pytest fixtures. Add yours below; keep this file small."""
try:  # tests/ as a package or as a rootdir-relative folder
    from .hub_server import local_hub  # noqa: F401
except ImportError:
    from hub_server import local_hub  # noqa: F401
