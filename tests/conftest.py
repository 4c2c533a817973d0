"""Shared fixtures live in plugin modules next to this file, one per concern."""

pytest_plugins = ["azurite_fixture", "clips"]
