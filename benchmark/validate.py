"""Typed checks of config sections: unknown keys, missing keys, wrong types, out-of-range values.

A section is described by a dataclass whose field metadata gives the valid range:
{"gt": x}, {"ge": x}, {"lt": x}, {"le": x}, {"choices": [...]}; for lists, {"min_items": n} and
the same range keys applied to every item. A field typed `X | None` accepts null. `check_fields` returns the dataclass
instance or raises a one-line UserError naming the key and what to do.
"""
from __future__ import annotations

import dataclasses
import typing

from benchmark.errors import UserError


def check_fields(prefix: str, schema: type, values: dict, where: str):
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"{prefix}.{unknown[0]} is not a known setting", f"use one of: {', '.join(sorted(fields))}")
    missing = sorted(n for n, f in fields.items() if n not in values
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise UserError(f"{prefix}.{missing[0]} is missing", f"add it to {where}")
    hints = typing.get_type_hints(schema)
    checked = {name: check_value(f"{prefix}.{name}", value, hints[name], fields[name].metadata)
               for name, value in values.items()}
    return schema(**checked)


def check_value(key: str, value, hint, meta):
    args = typing.get_args(hint)
    if type(None) in args:  # Optional: null is allowed, anything else is checked as the other type
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typing.get_origin(hint) is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key}={value!r} should be a list", "write it as [a, b, ...]")
        if len(value) < meta.get("min_items", 0):
            raise UserError(f"{key}={list(value)!r} needs at least {meta['min_items']} item(s)", "give e.g. [256, 256]")
        (item_hint,) = typing.get_args(hint) or (object,)
        item_meta = {k: v for k, v in meta.items() if k != "min_items"}
        return [check_value(f"{key}[{i}]", item, item_hint, item_meta) for i, item in enumerate(value)]
    elif hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise UserError(f"{key}={value!r} should be of type {hint.__name__}", f"give a value of type {hint.__name__}")
    if isinstance(value, float) and value != value:
        raise UserError(f"{key} is NaN", "give a number")
    if "gt" in meta and not value > meta["gt"]:
        raise UserError(f"{key}={value!r} must be greater than {meta['gt']}", "give a larger value")
    if "ge" in meta and not value >= meta["ge"]:
        raise UserError(f"{key}={value!r} must be at least {meta['ge']}", "give a larger value")
    if "lt" in meta and not value < meta["lt"]:
        raise UserError(f"{key}={value!r} must be less than {meta['lt']}", "give a smaller value")
    if "le" in meta and not value <= meta["le"]:
        raise UserError(f"{key}={value!r} must be at most {meta['le']}", "give a smaller value")
    if "choices" in meta and value not in meta["choices"]:
        raise UserError(f"{key}={value!r} is not allowed", f"choose one of: {', '.join(map(str, meta['choices']))}")
    return value
