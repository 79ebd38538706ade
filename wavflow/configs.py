"""The one checker of config dataclasses: a mapping from YAML, a `key=value` override or a checkpoint becomes a
dataclass, with unknown keys refused by name and values checked against the fields' annotations.

Used for the trainer's sections (wavflow/train/config.py: data, train, mel, model_config) and for every model
config built from a dict (`wavflow.models.config_from_dict`: checkpoints, presets, YAML). A dataclass's own
`__post_init__` still judges what only it knows (ranges, how fields combine); this module judges keys and types.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from .errors import WavflowError


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is tuple:
        return "a list of " + (_type_name(args[0]) + "s" if args and args[-1] is Ellipsis else f"{len(args)} values")
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string", dict: "a mapping"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def coerce(name: str, value: Any, tp: Any) -> Any:
    """`value` as type `tp` (a dataclass field annotation), or a WavflowError naming the key.

    YAML 1.1 reads `1e-4` as a string, so a number-typed key also accepts a string that parses as a number.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = WavflowError(f"{name}: expected {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return coerce(name, value, a)
                except WavflowError:
                    pass
        raise bad
    if origin is Literal:
        if value in args:
            return value
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise bad
    if tp is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        if args and args[-1] is Ellipsis:
            return tuple(coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value))
        if args:
            if len(value) != len(args):
                raise bad
            return tuple(coerce(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
        return tuple(value)
    return value  # a type this checker does not know: the dataclass's own constructor judges it


def check_fields(cls: type, values: Mapping[str, Any] | None, section: str | None = None, *,
                 coerce_types: bool = True) -> dict[str, Any]:
    """`values` checked against the fields of dataclass `cls`, ready for `cls(**values)`.

    Unknown keys are refused by name, as `section.key` when a section is given (the trainer's YAML), else
    with the class's name. With `coerce_types`, every value is coerced to its field's annotation (`coerce`).
    Without it (a model config from a checkpoint or from code) only lists become tuples, and the dataclass's
    `__post_init__` judges the values, so its message (field=value and the rule broken) is the one a user sees.
    """
    if not values:
        values = {}
    if not isinstance(values, Mapping):
        raise WavflowError(f"{section or cls.__name__}: expected a mapping of keys to values, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        if section is not None:
            raise WavflowError(f"unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                               f"known: {', '.join(sorted(names))}")
        raise WavflowError(f"unknown {cls.__name__} key(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    if coerce_types:
        prefix = f"{section}." if section is not None else ""
        return {k: coerce(f"{prefix}{k}", v, hints[k]) for k, v in values.items()}
    # YAML and checkpoints give lists where the dataclass has tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def from_dict(cls: type, values: Mapping[str, Any] | None, section: str | None = None, *,
              coerce_types: bool = True) -> Any:
    """An instance of dataclass `cls` built from `values` after `check_fields`."""
    return cls(**check_fields(cls, values, section, coerce_types=coerce_types))
