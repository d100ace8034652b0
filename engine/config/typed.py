"""Build frozen dataclasses from composed config nodes, with one-sentence errors that name
the dotted field and the fix (unknown keys, wrong types, missing values)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

from ..errors import ConfigError


def _coerce(value: Any, tp: Any, where: str, hint: str | None) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, hint)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            fix = f"; {hint}" if hint else ""
            raise ConfigError(f"{where}: expected a mapping, got {value!r}{fix}")
        return build(tp, value, where)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return tuple(_coerce(v, item_tp, f"{where}[{i}]", None) for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def build(cls: type, node: Any, where: str):
    """cls(**node) with every key checked against cls's fields and type hints.

    A field's metadata may carry `hint`: the fix to print when a mapping is expected but
    something else was given (e.g. 'choose a dataset with data@eval.data=NAME').
    """
    if not isinstance(node, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {node!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in node:
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown key; allowed keys are {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in node:
            kwargs[name] = _coerce(node[name], hints[name], f"{where}.{name}", f.metadata.get("hint"))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}.{name}: missing; set it with {where}.{name}=VALUE")
    return cls(**kwargs)
