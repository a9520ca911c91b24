"""Distillery's framework-free core (no Dagster imports), one subpackage per lifecycle stage.

``store`` (log store, artifacts), ``capture`` (gateway, recorder, log import), ``curation``,
``training``, ``evaluation``, ``serving`` (engine, model servers, routes), ``monitoring``; the
shared modules ``errors``, ``settings``, ``tasks`` and ``models``; ``lifecycle`` composes the
steps; ``demo`` is the built-in demo, apart from the product. docs/architecture.md has the map.
"""
