"""Reading values ikmdn did not make itself (model and checkpoint metadata, user input): bounded
JSON parsing, short echoes of bad values, and shared range limits. Torch- and onnxruntime-free.
"""

from __future__ import annotations

import json
from typing import Any

from ikmdn.errors import IKMDNError

MAX_JSON_BYTES = 1 << 20   # one metadata field; ikmdn writes a few kB (a 7-joint arm spec: ~3 kB)
MAX_JSON_DEPTH = 32        # nesting of lists and objects; ikmdn writes at most 4 levels
ECHO_CHARS = 60            # at most this much of a bad value is echoed in an error
MAX_SEED = 2**32 - 1       # what every seed consumer (torch, numpy) accepts
MAX_COMPONENTS = 4096      # mixture components a model file may declare (shipped: K <= 32)


def short(value: Any, limit: int = ECHO_CHARS) -> str:
    """repr(value), cut to limit characters (with '...') for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _depth(value: Any) -> int:
    """Nesting depth of lists and dicts (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= MAX_JSON_DEPTH:
            stack.extend((child, level + 1) for child in children)
    return deepest


def parse_json(text: Any, what: str, kind: type | None = None) -> Any:
    """The value of JSON text read from an untrusted file; IKMDNError naming `what` when the text is
    not a string, longer than MAX_JSON_BYTES, not JSON, nested deeper than MAX_JSON_DEPTH, or (with
    kind) not of that type (dict or list)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise IKMDNError(f"{what} is not UTF-8 text") from None
    if not isinstance(text, str):
        raise IKMDNError(f"{what} must be a JSON string, got {type(text).__name__}")
    if len(text) > MAX_JSON_BYTES:
        raise IKMDNError(f"{what} is {len(text):,} characters of JSON; at most {MAX_JSON_BYTES:,} "
                         "are read")
    try:
        value = json.loads(text)
    except RecursionError:
        raise IKMDNError(f"{what} is JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, and integers of more than 4300 digits
        raise IKMDNError(f"{what} is not valid JSON ({str(exc).splitlines()[0][:80]})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise IKMDNError(f"{what} is JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if kind is not None and not isinstance(value, kind):
        expected = {dict: "a JSON object", list: "a JSON list"}.get(kind, kind.__name__)
        raise IKMDNError(f"{what} must be {expected}, got {type(value).__name__}")
    return value
