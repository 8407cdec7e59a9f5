"""Integration tests share the served app fixture registered in tests/conftest.py."""
