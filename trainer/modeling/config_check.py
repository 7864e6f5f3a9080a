"""Configuration files read back (trace_config.json, train_config.json): the JSON object checked against a
dataclass's fields, every field's type and, where one is given, its range, so that a wrong value is one ConfigError
naming the file and the field instead of a TypeError far from it."""

from __future__ import annotations

import json
import math
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from common.errors import ConfigError

# A configuration file is a few hundred bytes; anything far larger is not one (and is not read whole).
MAX_CONFIG_BYTES = 1 << 20

Range = tuple[Callable[[Any], bool], str]  # (test of a well-typed value, what the value must be)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its class name when it has none), for one-line reports."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def read_json_object(path: Path, where: str) -> object:
    """The parsed JSON of a configuration file; ConfigError (`where` in front) when it is not a regular file, cannot
    be read, is too large or is not JSON. NaN and Infinity parse here; checked_fields refuses them."""
    if not path.is_file():
        raise ConfigError(f"{where}: not a regular file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{where}: cannot be read ({first_line(e)})") from e
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: over {MAX_CONFIG_BYTES} bytes, which no configuration file is")
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(f"{where}: not JSON ({first_line(e)})") from e


def checked_fields(data: object, cls: type, where: str, ranges: Mapping[str, Range] | None = None) -> dict[str, Any]:
    """`data` as keyword arguments of the dataclass `cls`; ConfigError "`where`: field NAME ..." for a field that is
    unknown, missing (and has no default), of the wrong type (NaN and Infinity are no numbers) or out of its range."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: it holds {_json_kind(data)}, not a JSON object of {cls.__name__} fields")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (not a {cls.__name__} field)")
    hints = get_type_hints(cls)
    for name, f in known.items():
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{where}: field {name} is missing")
            continue
        value = data[name]
        if not _matches(value, hints[name]):
            raise ConfigError(f"{where}: field {name} is {_show(value, kind=True)}, not {_describe(hints[name])}")
        test, want = (ranges or {}).get(name, (None, ""))
        if test is not None and value is not None and not test(value):
            raise ConfigError(f"{where}: field {name} is {_show(value)}: it must be {want}")
    return dict(data)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a parsed JSON value is of the annotated type (bool is no int; a float field takes an integer)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in get_args(hint))
    if origin is list:
        return isinstance(value, list) and all(_matches(v, get_args(hint)[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool or hint is str:
        return isinstance(value, hint)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    raise TypeError(f"checked_fields has no JSON check for the annotation {hint!r}")


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in get_args(hint))
    if origin is list:
        return f"a list of ({_describe(get_args(hint)[0])})"
    return {int: "an integer", float: "a finite number", bool: "true or false", str: "a string",
            type(None): "null"}.get(hint, repr(hint))


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float) and not math.isfinite(value):
        return "a non-finite number"
    for kind, name in ((type(None), "null"), (str, "a string"), (int, "an integer"), (float, "a number"),
                       (list, "a list"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _show(value: Any, kind: bool = False, most: int = 60) -> str:
    """The value as JSON (cut to `most` characters), with its JSON kind in brackets when asked (never for null)."""
    text = json.dumps(value)
    text = text if len(text) <= most else text[:most - 3] + "..."
    return f"{text} ({_json_kind(value)})" if kind and value is not None else text
