"""Fixtures shared by every test folder.

The served app (real Ray + Serve, started once per test session) is a plugin
here, so integration, browser and desktop-client tests share one instance.
"""

pytest_plugins = ["tests.integration.served"]
