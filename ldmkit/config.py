"""Typed dataclass configs to and from JSON, and dotted overrides from the command line.

A config is a frozen dataclass of plain values (int, float, str, bool, None, tuples of those,
and nested config dataclasses). JSON has no tuples, so `from_dict` turns lists back into the
tuples the field types ask for, and it refuses keys the dataclass does not have. A field typed
as a union of config dataclasses that each have a `kind` field is a tagged union: the JSON
object's "kind" picks the dataclass (a UNet or another backbone, say). A dataclass's
RENAMED_KEYS ({old: new}) reads files written before a field was renamed.
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
    renamed = getattr(cls, "RENAMED_KEYS", {})  # {old: new}: files written before a field was renamed
    data = {renamed.get(key, key): value for key, value in data.items()}
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
        arms = [arm for arm in typing.get_args(hint) if arm is not type(None)]
        tagged = [arm for arm in arms if dataclasses.is_dataclass(arm) and _kind_of(arm) is not None]
        if len(tagged) > 1 and isinstance(value, Mapping):  # a tagged union: the arm named by "kind"
            kinds = {_kind_of(arm): arm for arm in tagged}
            kind = value.get("kind", _kind_of(tagged[0]))
            if kind not in kinds:
                raise ValueError(f"{where}: unknown kind {kind!r}; choose one of {sorted(kinds)}")
            return from_dict(kinds[kind], value, where)
        return _convert(arms[0], value, where)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_convert(item, v, where) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """["unet.base_channels=64", "lr=1e-4"] (the command line's --set) as {key: raw value}."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes key=value (e.g. model.base_channels=64), got {pair!r}")
        overrides[key] = value
    return overrides


def parse_value(raw: str) -> Any:
    """A --set value: JSON (numbers, true, null, lists), and a bare word is a string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _kind_of(cls) -> str | None:
    """The default of a config dataclass's "kind" field: its tag in a tagged union."""
    field = cls.__dataclass_fields__.get("kind")
    return None if field is None or field.default is dataclasses.MISSING else field.default


def apply_overrides(config: C, overrides: Mapping[str, str]) -> C:
    """Apply {"unet.base_channels": "64", "lr": "1e-4"} to a (nested) config, parsing each value
    with parse_value. Unknown keys are an error naming the allowed ones."""
    data = to_dict(config)
    for dotted, raw in overrides.items():
        node, keys = data, dotted.split(".")
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                raise ValueError(f"unknown config section {key!r} in {dotted!r}")
            node = node[key]
        if keys[-1] not in node:
            raise ValueError(f"unknown config key {dotted!r}; known keys here: {sorted(node)}")
        node[keys[-1]] = parse_value(raw)
    return from_dict(type(config), data)
