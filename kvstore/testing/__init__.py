"""Tools for testing kvstore and programs built on it."""
