"""Typed dataclass configs to and from JSON, and dotted overrides from the command line.

A config is a frozen dataclass of plain values (int, float, str, bool, None, tuples of those,
and nested config dataclasses). JSON has no tuples, so `from_dict` turns lists back into the
tuples the field types ask for, and it refuses keys the dataclass does not have.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C")


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[C], data: Mapping[str, Any], where: str = "") -> C:
    """Build `cls` from a dict, converting nested configs and tuples; unknown keys are an error."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"{where or cls.__name__}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    values = {name: _convert(hints[name], value, f"{where or cls.__name__}.{name}") for name, value in data.items()}
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        for arm in typing.get_args(hint):
            if arm is not type(None):
                return _convert(arm, value, where)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_convert(item, v, where) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def apply_overrides(config: C, overrides: Mapping[str, str]) -> C:
    """Apply {"unet.base_channels": "64", "lr": "1e-4"} to a (nested) config, parsing each value
    as JSON (a bare word is a string). Unknown keys are an error naming the allowed ones."""
    data = to_dict(config)
    for dotted, raw in overrides.items():
        node, keys = data, dotted.split(".")
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                raise ValueError(f"unknown config section {key!r} in {dotted!r}")
            node = node[key]
        if keys[-1] not in node:
            raise ValueError(f"unknown config key {dotted!r}; known keys here: {sorted(node)}")
        try:
            node[keys[-1]] = json.loads(raw)
        except json.JSONDecodeError:
            node[keys[-1]] = raw
    return from_dict(type(config), data)
