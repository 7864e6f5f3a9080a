"""JSON Schemas shipped as package data: `schemas.load("mbeir_cot_row")`."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def load(name: str) -> dict[str, Any]:
    """Return the parsed schema `schemas/<name>.schema.json`."""
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def validator(name: str):
    """A jsonschema validator for the named schema (Draft 2020-12)."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(load(name))
