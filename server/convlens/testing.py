"""Pytest fixtures for convlens plugin authors."""
