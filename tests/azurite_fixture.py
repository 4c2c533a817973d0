"""Azurite fixture: filled in by the storage work."""
