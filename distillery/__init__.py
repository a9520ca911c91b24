"""Distillery: the framework-free core (no Dagster imports in this package)."""
