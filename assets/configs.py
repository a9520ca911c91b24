"""Run configs built from the core's settings dataclasses, so the launchpad cannot drift from them.

Each field of a config made by ``config_from`` has the dataclass field's name, type, default and description (the
field's ``metadata["doc"]``, written with ``distillery.settings.setting``): a field added to ``TrainingConfig``,
``MonitoringPolicy`` or ``GatePolicy`` appears in the launchpad with no edit here. Where the launchpad speaks other
units than the core (the gate's margin in points), ``scaled`` names the one conversion, and ``to_core`` applies it
back. Fields the core does not have are added as ``extra`` pydantic fields.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar

import dagster as dg
import pydantic

from distillery.settings import DOC


class CoreConfig(dg.Config):
    """A run config whose fields are a core dataclass's (``config_from``)."""

    core: ClassVar[type]
    scaled: ClassVar[dict[str, tuple[str, float, str]]] = {}

    def to_core(self, only_set: bool = False) -> dict[str, Any]:
        """The core dataclass's keyword arguments from this config, in the core's units (``only_set``: only the
        fields the run set, so the core's other defaults, or a recipe, fill the rest)."""
        values = self.model_dump(exclude_unset=only_set)
        arguments = {item.name: values[item.name] for item in dataclasses.fields(self.core) if item.name in values}
        for core_name, (config_name, factor, _) in self.scaled.items():
            if config_name in values:
                arguments[core_name] = values[config_name] / factor
        return arguments


def config_from(core: type, name: str, doc: str, *, scaled: dict[str, tuple[str, float, str]] | None = None,
                **extra: tuple[Any, Any]) -> type[CoreConfig]:
    """A run config class named ``name`` with one field per field of the dataclass ``core`` (a field of ``scaled`` as
    ``{core field: (config field, factor, unit)}``: the config's value is the core's times the factor), and the
    ``extra`` fields as ``name=(type, pydantic.Field(...))``."""
    scaled = scaled or {}
    hints = typing.get_type_hints(core)
    fields: dict[str, tuple[Any, Any]] = {}
    for item in dataclasses.fields(core):
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        description = item.metadata.get(DOC)
        if description is None:
            raise TypeError(f"{core.__name__}.{item.name} has no doc: declare it with distillery.settings.setting")
        if item.name in scaled:
            config_name, factor, unit = scaled[item.name]
            fields[config_name] = (hints[item.name], pydantic.Field(
                default=round(default * factor, 10), description=f"{description} Given here in {unit}."))
        else:
            fields[item.name] = (hints[item.name], pydantic.Field(default=default, description=description))
    base = type(f"{name}Core", (CoreConfig,), {"core": core, "scaled": scaled, "__module__": __name__})
    return pydantic.create_model(name, __base__=base, __doc__=doc, __module__=__name__, **fields, **extra)
