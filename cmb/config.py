"""The workflow's configuration: one schema, one source of every default.

``config/config.schema.yaml`` describes every setting, and its ``default`` is the only
place a default is written. This module reads it for everyone:

- :func:`resolve` validates a whole workflow config once (the Snakefile calls it at
  start): strings that stand for the schema's other types are typed
  (:func:`coerce_to_schema`), participant labels are made text again
  (:func:`participant_labels`), missing keys get the schema's defaults, and an invalid
  value raises :class:`ConfigError` with one line that names the key.
- :func:`defaults` and :func:`default` give the schema's defaults, for example to a
  function signature.
- :func:`add_config_sections` gives a stage's command line the defaults of its config
  sections and the option ``--config-sections JSON``, which is how each rule hands its
  stage the sections it reads (the resolved values, not a list of flags).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import textwrap
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

__all__ = [
    "ConfigError",
    "LABEL_KEYS",
    "SCHEMA_FILE",
    "add_config_sections",
    "coerce_to_schema",
    "config_sections_json",
    "default",
    "defaults",
    "int_list",
    "participant_labels",
    "resolve",
    "schema",
]

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "config" / "config.schema.yaml"
LABEL_KEYS = ("participant_label", "exclude_participant_label")

_TYPES = {"boolean": bool, "integer": int, "number": (int, float), "null": type(None)}


class ConfigError(ValueError):
    """An invalid workflow configuration; the message names the key and the allowed values."""


@functools.cache
def _schema() -> dict:
    with open(SCHEMA_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f)


def schema() -> dict:
    """The workflow config schema (a copy: callers may change it)."""
    return copy.deepcopy(_schema())


def _section_schema(section: str) -> dict:
    props = _schema()["properties"]
    if section not in props or props[section].get("type") != "object":
        raise KeyError(f"{section!r} is not a config section of {SCHEMA_FILE.name}")
    return props[section]


# ------------------------------------------------------------------ typing and defaults


def _types(sub: dict) -> list[str]:
    t = sub.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _coerce(value, sub: dict):
    if isinstance(value, dict):
        props = sub.get("properties", {})
        return {k: _coerce(v, props[k]) if k in props else v for k, v in value.items()}
    if isinstance(value, list) and isinstance(sub.get("items"), dict):
        return [_coerce(v, sub["items"]) for v in value]
    types = _types(sub)
    if not isinstance(value, str) or "string" in types or not types:
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    ok = any(
        isinstance(parsed, _TYPES[t])
        and not (t in ("integer", "number") and isinstance(parsed, bool))
        for t in types
        if t in _TYPES
    )
    return parsed if ok else value


def coerce_to_schema(config: dict, sub: dict | None = None) -> dict:
    """``config`` with strings that stand for the schema's non-string types converted.

    ``snakemake --config key=value`` types a top-level value, but a nested one such as
    ``--config detection='{use_gpu: false}'`` arrives as strings (Snakemake reads it with
    YAML's base loader). Strings the schema allows stay strings (labels such as ``"01"``).

    Examples
    --------
    >>> sub = {"properties": {"detection": {"properties": {
    ...     "use_gpu": {"type": "boolean"}, "threshold": {"type": ["number", "null"]}}},
    ...     "label": {"type": "string"}, "steps": {"type": "array", "items": {"type": "integer"}}}}
    >>> coerce_to_schema({"detection": {"use_gpu": "false", "threshold": "0.4"}, "label": "01",
    ...                   "steps": ["40", "20"]}, sub)
    {'detection': {'use_gpu': False, 'threshold': 0.4}, 'label': '01', 'steps': [40, 20]}
    >>> coerce_to_schema({"detection": {"use_gpu": "maybe"}}, sub)  # left for validation to reject
    {'detection': {'use_gpu': 'maybe'}}
    """
    return _coerce(config, _schema() if sub is None else sub)


def _fill_defaults(value: dict, sub: dict) -> dict:
    out = dict(value)
    for key, prop in sub.get("properties", {}).items():
        if key not in out and "default" in prop:
            out[key] = copy.deepcopy(prop["default"])
        if isinstance(out.get(key), dict) and prop.get("type") == "object":
            out[key] = _fill_defaults(out[key], prop)
    return out


def defaults(section: str | None = None) -> dict:
    """The schema's defaults: of one section, or of the whole config (without the required keys).

    >>> defaults("register")["syn"]
    True
    """
    return _fill_defaults({}, _schema() if section is None else _section_schema(section))


def default(section: str, key: str) -> Any:
    """The schema's default of ``section.key``.

    >>> default("preprocess", "n4_iterations")
    [50, 40, 30]
    """
    value = defaults(section)
    if key not in value:
        raise KeyError(f"{section}.{key} has no default in {SCHEMA_FILE.name}")
    return value[key]


def _validate(value: dict, sub: dict, where: str = "") -> None:
    validator = jsonschema.Draft202012Validator(sub)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        path = (
            ".".join([*([where] if where else []), *(str(p) for p in err.absolute_path)])
            or "top level"
        )
        raise ConfigError(
            f"invalid configuration ({path}): {err.message}. "
            f"Allowed keys and values are described in config/{SCHEMA_FILE.name}."
        )


# ------------------------------------------------------------------ participant labels


def participant_labels(
    value, key: str, *, written: Any = None, dataset_labels: Iterable[str] = ()
) -> list[str]:
    """A participant label setting as a list of strings.

    YAML reads ``02`` as the integer 2. Such an item becomes the text the config file has
    for it (``written``: the value read with YAML's base loader, every scalar as text),
    else the one ``sub-*`` label of the dataset that reads as that number.

    >>> participant_labels([2, "03"], "participant_label", written=["02", "03"])
    ['02', '03']
    >>> participant_labels(2, "participant_label", dataset_labels=["01", "02"])
    ['02']
    >>> participant_labels(None, "participant_label")
    []
    """
    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    is_int = [isinstance(v, int) and not isinstance(v, bool) for v in items]
    if not any(is_int):
        return items
    raw = written if isinstance(written, list) else [written]
    if len(raw) == len(items) and all(isinstance(r, str) for r in raw):
        return [r if i else v for r, v, i in zip(raw, items, is_int)]
    labels = list(dataset_labels)
    out = []
    for v, i in zip(items, is_int):
        if not i:
            out.append(v)
            continue
        matches = sorted(lab for lab in labels if lab.isdigit() and int(lab) == v)
        if len(matches) > 1:
            raise ConfigError(
                f"{key}: {v} matches several subjects "
                f"({', '.join('sub-' + m for m in matches)}); quote the label, e.g. '{matches[0]}'"
            )
        out.append(matches[0] if matches else str(v))
    return out


def written_value(key: str, config_files: Iterable[str | Path]) -> Any:
    """``key`` as written in the last of ``config_files`` that has it (every YAML scalar as text)."""
    value = None
    for path in config_files:
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.load(f, Loader=yaml.BaseLoader)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(raw, dict) and key in raw:
            value = raw[key]
    return value


def resolve(
    config: Mapping,
    *,
    config_files: Iterable[str | Path] = (),
    from_command_line: Iterable[str] = (),
    dataset_labels: Callable[[], Iterable[str]] = tuple,
) -> dict:
    """The validated workflow config: typed, labels as text, defaults filled.

    ``config_files`` (in the order they were read) give the participant labels as written;
    labels in ``from_command_line`` are looked up in ``dataset_labels()`` instead.

    >>> cfg = resolve({"bids_dir": "in", "output_dir": "out", "register": {"syn": "false"}})
    >>> cfg["register"]["syn"], cfg["register"]["step_mm"], cfg["participant_label"]
    (False, 2, [])
    >>> resolve({"bids_dir": "in", "output_dir": "out", "detection": {"batch_size": "many"}})
    Traceback (most recent call last):
    ...
    cmb.config.ConfigError: invalid configuration (detection.batch_size): 'many' is not of type 'integer'. ...
    """
    cfg = coerce_to_schema(dict(config))
    files = list(config_files)
    cli = set(from_command_line)
    for key in LABEL_KEYS:
        cfg[key] = participant_labels(
            cfg.get(key),
            key,
            written=None if key in cli else written_value(key, files),
            dataset_labels=dataset_labels(),
        )
    cfg = _fill_defaults(cfg, _schema())
    _validate(cfg, _schema())
    return cfg


# ------------------------------------------------------------------ a stage's command line


def int_list(text: str) -> list[int]:
    """A command-line list of integers, comma-separated ("50,40,30").

    >>> int_list("40, 20,0")
    [40, 20, 0]
    """
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None


def config_sections_json(config: Mapping, *sections: str) -> str:
    """The ``--config-sections`` value a rule passes its stage: these sections of ``config``."""
    return json.dumps({s: config[s] for s in sections}, sort_keys=True, separators=(",", ":"))


def _sections_parser(sections: tuple[str, ...]) -> Callable[[str], dict]:
    def parse(text: str) -> dict:
        try:
            given = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"not JSON ({e})") from None
        if not isinstance(given, dict) or set(given) - set(sections):
            raise argparse.ArgumentTypeError(
                f"expected an object with the config sections {', '.join(sections)}"
            )
        flat = {}
        for section in sections:
            sub = _section_schema(section)
            value = _fill_defaults(coerce_to_schema(given.get(section, {}), sub), sub)
            try:
                _validate(value, sub, section)
            except ConfigError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
            flat.update(value)
        return flat

    return parse


class _ConfigSections(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        for key, value in values.items():
            setattr(namespace, key, value)


def add_config_sections(parser: argparse.ArgumentParser, *sections: str) -> argparse.ArgumentParser:
    """Give ``parser`` the schema's defaults of ``sections`` and the option ``--config-sections``.

    Each setting of the sections is an attribute of the parsed arguments, named as in the
    config (an option that sets one has that ``dest``). ``--config-sections JSON`` sets
    them all from the object ``{section: {key: value}}`` (missing keys: the defaults),
    validated against the schema; options after it on the command line win.

    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("--no-syn", dest="syn", action="store_false")
    >>> _ = add_config_sections(p, "register")
    >>> p.parse_args([]).step_mm, p.parse_args(["--config-sections", '{"register": {"step_mm": 4}}']).step_mm
    (2, 4)
    >>> p.parse_args(["--config-sections", '{"register": {"syn": true}}', "--no-syn"]).syn
    False
    """
    flat: dict[str, str] = {}
    for section in sections:
        for key in defaults(section):
            if key in flat:
                raise ValueError(f"config key {key} is in both {flat[key]} and {section}")
            flat[key] = section
        parser.set_defaults(**defaults(section))
    parser.add_argument(
        "--config-sections",
        metavar="JSON",
        type=_sections_parser(sections),
        action=_ConfigSections,
        help=f"the workflow config sections {', '.join(sections)} as a JSON object "
        f"(as the workflow passes them; options after it win). Defaults: config/{SCHEMA_FILE.name}",
    )
    return parser


# ------------------------------------------------------------------ every setting, for a user


def config_template() -> str:
    """Every setting with its default and description, as a YAML file to start a config from.

    >>> text = config_template()
    >>> yaml.safe_load(text)["register"] == defaults("register")
    True
    """

    def lines(sub: dict, indent: int) -> list[str]:
        out = []
        for key, prop in sub.get("properties", {}).items():
            pad = " " * indent
            if prop.get("description"):
                out += [
                    pad + "# " + t
                    for t in textwrap.wrap(" ".join(prop["description"].split()), 88 - indent)
                ]
            if prop.get("type") == "object" and "properties" in prop:
                out += [f"{pad}{key}:", *lines(prop, indent + 2), ""]
            elif "default" in prop:
                value = json.dumps(prop["default"])
                out.append(f"{pad}{key}: {value}")
            else:
                out.append(f"{pad}{key}:  # required")
        return out

    head = [
        "# cmb workflow configuration: every setting, with its default (config/config.schema.yaml).",
        "# Keep only the ones you change:  snakemake --profile profiles/local --configfile my.yaml",
        "",
    ]
    return "\n".join(head + lines(_schema(), 0)).rstrip() + "\n"


def main(argv=None) -> int:
    """``python -m cmb.config``: print every setting with its default and description (YAML)."""
    parser = argparse.ArgumentParser(prog="python -m cmb.config", description=main.__doc__)
    parser.parse_args(argv)
    print(config_template(), end="")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
