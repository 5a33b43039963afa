"""Typed values for settings given on the command line.

``snakemake --config key=value`` types a top-level value, but a nested one such as
``--config detection='{use_gpu: false}'`` arrives as strings (Snakemake reads it with
YAML's base loader): ``{"use_gpu": "false"}``. :func:`coerce_to_schema` turns such
strings back into the boolean, number or null that the config schema asks for, and
leaves every string the schema allows as a string (participant labels such as ``"01"``).
"""

from __future__ import annotations

import yaml

__all__ = ["coerce_to_schema"]

_TYPES = {"boolean": bool, "integer": int, "number": (int, float), "null": type(None)}


def _types(schema: dict) -> list[str]:
    t = schema.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _coerce(value, schema: dict):
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _coerce(v, props[k]) if k in props else v for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_coerce(v, schema["items"]) for v in value]
    types = _types(schema)
    if not isinstance(value, str) or "string" in types or not types:
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    ok = any(isinstance(parsed, _TYPES[t]) and not (t in ("integer", "number") and isinstance(parsed, bool))
             for t in types if t in _TYPES)
    return parsed if ok else value


def coerce_to_schema(config: dict, schema: dict) -> dict:
    """``config`` with strings that stand for the schema's non-string types converted.

    Examples
    --------
    >>> schema = {"properties": {"detection": {"properties": {
    ...     "use_gpu": {"type": "boolean"}, "threshold": {"type": ["number", "null"]}}},
    ...     "label": {"type": "string"}, "steps": {"type": "array", "items": {"type": "integer"}}}}
    >>> coerce_to_schema({"detection": {"use_gpu": "false", "threshold": "0.4"}, "label": "01",
    ...                   "steps": ["40", "20"]}, schema)
    {'detection': {'use_gpu': False, 'threshold': 0.4}, 'label': '01', 'steps': [40, 20]}
    >>> coerce_to_schema({"detection": {"use_gpu": "maybe"}}, schema)  # left for validation to reject
    {'detection': {'use_gpu': 'maybe'}}
    """
    return _coerce(config, schema)
