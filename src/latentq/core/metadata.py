"""A job's metadata (free JSON the caller attaches, returned with its status): bounded in size and depth,
checked without ever recursing on the caller's input (``json.loads`` recurses and can run out of stack)."""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import InvalidRequest

__all__ = ["METADATA_MAX_BYTES", "METADATA_MAX_DEPTH", "check_metadata", "json_depth", "parse_metadata"]

METADATA_MAX_BYTES = 16 * 1024  # of compact JSON
METADATA_MAX_DEPTH = 8  # nested objects / arrays, the metadata object itself being 1

_ESCAPE = re.compile(r"\\.", re.S)
_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """How deep JSON text nests, found without parsing it (json.loads recurses, and can run out of stack)."""
    # Escapes first, then whole strings: brackets inside strings do not nest. Each pass is linear.
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    depth = deepest = 0
    for char in brackets:
        depth += 1 if char in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_metadata(text: str) -> dict[str, Any]:
    """Metadata sent as JSON text (a query parameter): size and depth checked before parsing."""
    size = len(text.encode())
    if size > METADATA_MAX_BYTES:
        raise InvalidRequest(f"metadata is {size} bytes, over the limit of {METADATA_MAX_BYTES}", field="metadata")
    if json_depth(text) > METADATA_MAX_DEPTH:
        raise InvalidRequest(f"metadata is nested over {METADATA_MAX_DEPTH} levels deep", field="metadata")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise InvalidRequest(f"metadata is not valid JSON: {exc}", field="metadata") from None
    check_metadata(value)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_metadata(metadata: object) -> None:
    """A JSON object at most METADATA_MAX_DEPTH deep and METADATA_MAX_BYTES long, or InvalidRequest."""
    if not isinstance(metadata, dict):
        raise InvalidRequest("metadata must be a JSON object", field="metadata")
    stack: list[tuple[object, int]] = [(metadata, 1)]  # iterative: a deep Python object cannot recurse us
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list | tuple):
            if depth > METADATA_MAX_DEPTH:
                raise InvalidRequest(f"metadata is nested over {METADATA_MAX_DEPTH} levels deep", field="metadata")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    try:
        size = len(json.dumps(metadata, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"metadata must be plain JSON (no NaN or Infinity): {exc}", field="metadata") from None
    if size > METADATA_MAX_BYTES:
        raise InvalidRequest(f"metadata is {size} bytes of JSON, over the limit of {METADATA_MAX_BYTES}",
                             field="metadata")  # fmt: skip
