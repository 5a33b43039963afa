"""Evaluation outputs: a cohort evaluated at one threshold, and the files written from it.

:func:`write_evaluation` writes every output of a cohort (per-subject and cohort
CSV/JSON, FROC CSV/PNG, matched detections) atomically; :func:`recorded_threshold`
reads the operating threshold the detect stage recorded beside its tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cmb.atomic import write_json, write_text
from cmb.evaluation.froc import froc_curve, plot_froc
from cmb.evaluation.matching import MARGIN_MM, MIN_POINT_RADIUS_MM, CohortMatch, match_cohort
from cmb.evaluation.metrics import LOCATION_COLUMNS, cohort_metrics, subject_table
from cmb.layout import sibling

__all__ = [
    "evaluate_cohort",
    "write_subject_csv",
    "write_cohort",
    "write_froc",
    "write_evaluation",
    "recorded_threshold",
]


def _jsonable(obj):
    """NaN and infinities become None (JSON has no such numbers)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_subject_csv(per_subject: pd.DataFrame, path) -> None:
    """Write the per-subject table (:func:`subject_table`) as CSV, atomically."""
    write_text(path, per_subject.to_csv(index=False))


def _cohort_rows(cohort: dict) -> pd.DataFrame:
    groups = [("all", cohort)]
    for key, value in cohort.items():
        if key.startswith("by_") and isinstance(value, dict):
            groups += [(f"{key[3:]}={name}", m) for name, m in value.items()]
    rows = [
        {"group": g, **{k: v for k, v in m.items() if not isinstance(v, (dict, list))}}
        for g, m in groups
    ]
    return pd.DataFrame(rows)


def write_cohort(cohort: dict, csv_path=None, json_path=None) -> None:
    """Write cohort metrics (:func:`cohort_metrics`), atomically.

    CSV: one row per group (``all``, then ``acquisition=<label>``...), one column
    per scalar metric. JSON: the whole dict, NaN written as null (see ``notes``).
    """
    if csv_path is not None:
        write_text(csv_path, _cohort_rows(cohort).to_csv(index=False))
    if json_path is not None:
        write_json(json_path, _jsonable(cohort))


def write_froc(
    froc: pd.DataFrame, csv_path, png_path=None, *, operating_threshold: float | None = None
) -> None:
    """Write the FROC table as CSV (``threshold`` of the endpoint: ``inf``) and optionally its plot."""
    write_text(csv_path, froc.to_csv(index=False))
    if png_path is not None:
        plot_froc(froc, png_path, operating_threshold=operating_threshold)


def evaluate_cohort(
    pairs: Iterable,
    threshold: float | None = None,
    *,
    margin_mm: float = MARGIN_MM,
    min_point_radius_mm: float = MIN_POINT_RADIUS_MM,
    location_columns: Sequence[str] = LOCATION_COLUMNS,
) -> tuple[pd.DataFrame, dict]:
    """Per-subject table and cohort metrics of a cohort at one threshold.

    Parameters
    ----------
    pairs : iterable of (subject, acquisition, detections, truth)
        As for :func:`match_cohort`.
    threshold : float, optional
        Confidence threshold (``>=`` kept); None keeps every detection.

    Returns
    -------
    per_subject : DataFrame
        :func:`subject_table`.
    cohort : dict
        :func:`cohort_metrics` (with ``by_acquisition``) plus the settings
        ``margin_mm`` and ``min_point_radius_mm``.

    Examples
    --------
    >>> truth = pd.DataFrame({"x_mm": [0.0], "y_mm": [0.0], "z_mm": [0.0]})
    >>> det = pd.DataFrame({"x_mm": [0.0], "y_mm": [0.0], "z_mm": [0.0], "confidence": [0.7]})
    >>> ps, cohort = evaluate_cohort([("sub-1", "swi", det, truth), ("sub-2", "swi", None, truth)], 0.5)
    >>> ps["tp"].tolist(), cohort["sensitivity"]
    ([1, 0], 0.5)
    """
    match = match_cohort(pairs, margin_mm=margin_mm, min_point_radius_mm=min_point_radius_mm)
    return _evaluate(match, threshold, location_columns)


def _evaluate(match: CohortMatch, threshold, location_columns) -> tuple[pd.DataFrame, dict]:
    per_subject = subject_table(match, threshold, location_columns)
    cohort = cohort_metrics(per_subject)
    cohort["threshold"] = float("nan") if threshold is None else float(threshold)
    cohort.update(
        margin_mm=float(match.margin_mm), min_point_radius_mm=float(match.min_point_radius_mm)
    )
    return per_subject, cohort


def write_evaluation(
    out_dir,
    match: CohortMatch,
    threshold: float | None,
    location_columns: Sequence[str] = LOCATION_COLUMNS,
) -> dict[str, Path]:
    """Write every evaluation output of a cohort into ``out_dir``.

    Files: ``subjects.csv`` (:func:`subject_table`), ``cohort.csv`` and
    ``cohort.json`` (:func:`cohort_metrics`), ``froc.csv`` and ``froc.png``
    (:func:`froc_curve`, operating point marked), ``detections.csv`` (every
    detection with its match and ``kept`` = confidence >= threshold).

    Returns
    -------
    dict
        Output name -> path.
    """
    out = Path(out_dir)
    paths = {
        name: out / name
        for name in (
            "subjects.csv",
            "cohort.csv",
            "cohort.json",
            "froc.csv",
            "froc.png",
            "detections.csv",
        )
    }
    per_subject, cohort = _evaluate(match, threshold, location_columns)
    froc = froc_curve(match)
    write_subject_csv(per_subject, paths["subjects.csv"])
    write_cohort(cohort, paths["cohort.csv"], paths["cohort.json"])
    write_froc(froc, paths["froc.csv"], paths["froc.png"], operating_threshold=threshold)
    det = match.detections.copy()
    det["kept"] = (
        True if threshold is None else det["confidence"].to_numpy(dtype=float) >= float(threshold)
    )
    write_text(paths["detections.csv"], det.to_csv(index=False))
    return paths


def recorded_threshold(tables) -> float | None:
    """The operating threshold the detect stage recorded for these scans (``*_desc-candidates_cmb.json``).

    None when no scan has one (tables of other tools); a ValueError when scans were
    detected with different thresholds.
    """
    found = {}
    for table in tables:
        if table is None:
            continue
        try:
            sidecar = sibling(table, "candidates_sidecar")
            found[sidecar] = float(json.loads(sidecar.read_text())["threshold"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    values = sorted(set(found.values()))
    if len(values) > 1:
        raise ValueError(
            f"the scans were detected with {len(values)} different thresholds "
            f"({', '.join(map(repr, values[:4]))}); give --threshold"
        )
    return values[0] if values else None
