"""Fixtures of the client tests: the serving tests' live server (a real Valkey, db 9, and a
real index; tests/serving/conftest.py)."""

from __future__ import annotations

from tests.serving.conftest import holder, running, serve, users, vstore

__all__ = ["holder", "running", "serve", "users", "vstore"]
