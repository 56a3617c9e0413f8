"""The wire-contract schemas (schemas/*.v1.json), loaded once, for tests to check messages.

`schema_accepts` is the schema's whole verdict on raw bytes: strict JSON first
(UTF-8 only, no NaN/Infinity, no lone surrogates), then the JSON Schema.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


def load_schema(name: str) -> dict[str, Any]:
    """The schema `name`, e.g. "behavior_event.v1" (the `.json` suffix is optional)."""
    stem = name.removesuffix(".json")
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"{stem}.json").read_text("utf-8"))
    return schema


@cache
def validator(name: str) -> Any:
    """A compiled validator for `name`; `.is_valid(doc)`, `.validate(doc)`, `.iter_errors(doc)`."""
    return jsonschema_rs.validator_for(load_schema(name))


def _refuse_constant(literal: str) -> Any:
    raise ValueError(f"{literal} is not JSON")


def strict_json(raw: bytes) -> Any:
    """Parse `raw` as RFC 8259 JSON in UTF-8; raises ValueError or RecursionError."""
    value = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    # A lone surrogate escape (\\ud800) parses to a str that is not Unicode text.
    json.dumps(value, ensure_ascii=False).encode("utf-8")
    return value


def schema_accepts(name: str, raw: bytes) -> bool:
    """Whether the bytes are strict JSON that the schema `name` accepts."""
    try:
        value = strict_json(raw)
    except (ValueError, RecursionError):
        return False
    return bool(validator(name).is_valid(value))
