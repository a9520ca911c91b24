"""Distillery's framework-free core (no Dagster imports), one subpackage per lifecycle stage.

``store`` (log store, artifacts), ``capture`` (recorder, client wrapper, log import), ``gateway``, ``curation``,
``training`` (the candidate students), ``evaluation`` (the choice of the student, the gate), ``serving`` (engine,
encoder students, model servers), ``routing`` (routes, rollback, the autopilot, the one step back), ``monitoring``,
``fleet``; the shared modules ``errors``, ``settings``, ``tasks``, ``grounding``, ``students``, ``models``, ``wire``
and ``pricing``; ``lifecycle`` composes the steps; ``demo`` is the built-in demo, apart from the product.
docs/architecture.md has the map.
"""
