"""Metrics of a matched cohort: the per-subject table and the cohort metrics.

Every value is read from one threshold-free matching (:func:`cmb.evaluation.matching.match_cohort`)
restricted to the detections with ``confidence >= threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cmb.evaluation.matching import CohortMatch, kept_detections
from cmb.evaluation.truth import check_columns

__all__ = [
    "LOCATION_COLUMNS",
    "SUBJECT_COLUMNS",
    "rates_from_counts",
    "subject_table",
    "count_pearson_r",
    "cohort_metrics",
    "metrics_by",
]

#: Optional columns compared between a true positive and its CMB (localization accuracy).
LOCATION_COLUMNS = ("mars_category", "mars_region", "hemisphere")
#: Leading columns of the per-subject table (localization columns follow when available).
SUBJECT_COLUMNS = [
    "subject",
    "acquisition",
    "threshold",
    "n_truth",
    "n_detections",
    "tp",
    "fp",
    "fn",
    "sensitivity",
    "precision",
    "f1",
    "count_error",
]


def _ratio(num, den) -> float:
    return float(num) / float(den) if den else float("nan")


def rates_from_counts(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Sensitivity, precision, F1 = 2TP / (2TP + FP + FN); NaN where the denominator is 0."""
    return _ratio(tp, tp + fn), _ratio(tp, tp + fp), _ratio(2 * tp, 2 * tp + fp + fn)


def _norm_label(v):
    return str(v).strip().casefold()


def subject_table(
    match: CohortMatch,
    threshold: float | None = None,
    location_columns: Sequence[str] = LOCATION_COLUMNS,
) -> pd.DataFrame:
    """Per-scan counts and rates at a threshold.

    Parameters
    ----------
    match : CohortMatch
    threshold : float, optional
        Detections with ``confidence < threshold`` are ignored; None keeps all.
    location_columns : sequence of str, optional
        For each column present in both detections and truth: ``<col>_evaluated``
        (true positives where both values are given) and ``<col>_correct`` (those
        equal, case-insensitive).

    Returns
    -------
    DataFrame
        :data:`SUBJECT_COLUMNS` (``count_error`` = n_detections - n_truth) then the
        localization columns, one row per scan in input order.
    """
    det = kept_detections(match.detections, threshold)
    tp_rows = det[det["truth_id"].notna()]
    n_det = det.groupby("subject").size()
    n_tp = tp_rows.groupby("subject").size()
    out = match.subjects[["subject", "acquisition"]].copy()
    out.insert(2, "threshold", float("nan") if threshold is None else float(threshold))
    out["n_truth"] = match.subjects["n_truth"].to_numpy(dtype=np.int64)
    out["n_detections"] = out["subject"].map(n_det).fillna(0).astype(np.int64)
    out["tp"] = out["subject"].map(n_tp).fillna(0).astype(np.int64)
    out["fp"] = out["n_detections"] - out["tp"]
    out["fn"] = out["n_truth"] - out["tp"]
    rates = np.array(
        [rates_from_counts(*r) for r in out[["tp", "fp", "fn"]].itertuples(index=False)],
        dtype=float,
    )
    for k, name in enumerate(("sensitivity", "precision", "f1")):
        out[name] = rates.reshape(-1, 3)[:, k]
    out["count_error"] = out["n_detections"] - out["n_truth"]
    for col in location_columns:
        if col not in match.detections.columns or col not in match.truth.columns:
            continue
        tru = match.truth[["subject", "truth_id", col]].rename(columns={col: "_truth_value"})
        tru = tru.astype({"truth_id": np.int64})
        joined = (
            tp_rows[["subject", "truth_id", col]]
            .astype({"truth_id": np.int64})
            .merge(tru, on=["subject", "truth_id"], how="left")
        )
        both = joined[col].notna() & joined["_truth_value"].notna()
        joined = joined[both]
        correct = joined[col].map(_norm_label) == joined["_truth_value"].map(_norm_label)
        out[f"{col}_evaluated"] = (
            out["subject"].map(joined.groupby("subject").size()).fillna(0).astype(np.int64)
        )
        out[f"{col}_correct"] = (
            out["subject"].map(correct.groupby(joined["subject"]).sum()).fillna(0).astype(np.int64)
        )
    return out.reset_index(drop=True)


def count_pearson_r(detected, true) -> float:
    """Pearson correlation of per-scan detected and true counts.

    NaN when fewer than 2 scans, or when either count has zero variance (R is
    undefined then; :func:`cohort_metrics` says so in its ``notes``).

    Examples
    --------
    >>> round(count_pearson_r([1, 3, 2, 4], [1, 2, 3, 4]), 12)
    0.8
    >>> count_pearson_r([1, 1, 1], [0, 2, 5])
    nan
    """
    x = np.asarray(detected, dtype=float)
    y = np.asarray(true, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("detected and true counts must be 1D sequences of equal length")
    if x.size < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / den if den > 0 else float("nan")


def cohort_metrics(per_subject: pd.DataFrame, by: str | None = "acquisition") -> dict:
    """Cohort metrics from a per-subject table (:func:`subject_table`).

    Parameters
    ----------
    per_subject : DataFrame
        Needs ``n_truth, n_detections, tp, fp, fn``; ``<col>_evaluated`` /
        ``<col>_correct`` pairs give localization accuracies.
    by : str or None, optional
        When this column exists, ``by_<by>`` holds the metrics of each group.

    Returns
    -------
    dict
        ``n_subjects, n_truth, n_detections, tp, fp, fn``;
        ``sensitivity`` = TP / n_truth, ``precision`` = TP / n_detections,
        ``f1`` = 2TP / (2TP + FP + FN), ``fp_avg`` = FP / n_subjects,
        ``fp_cmb`` = FP / n_truth (NaN when a denominator is 0);
        ``count_pearson_r`` (:func:`count_pearson_r`), ``count_mae`` = mean
        |n_detections - n_truth|; ``<col>_accuracy`` = correct / evaluated and
        ``<col>_evaluated``; ``threshold`` when the table has one; ``notes``:
        why any value is NaN.

    Examples
    --------
    >>> ps = pd.DataFrame({"n_truth": [2, 0], "n_detections": [2, 1], "tp": [1, 0],
    ...                    "fp": [1, 1], "fn": [1, 0]})
    >>> m = cohort_metrics(ps)
    >>> m["sensitivity"], m["precision"], m["fp_avg"], m["fp_cmb"], m["count_mae"]
    (0.5, 0.3333333333333333, 1.0, 1.0, 0.5)
    """
    check_columns(per_subject, ["n_truth", "n_detections", "tp", "fp", "fn"], "per-subject table")
    ps = per_subject
    n_sub = len(ps)
    tp, fp, fn, n_truth, n_det = (
        int(ps[c].sum()) for c in ("tp", "fp", "fn", "n_truth", "n_detections")
    )
    sens, prec, f1 = rates_from_counts(tp, fp, fn)
    out = {
        "n_subjects": n_sub,
        "n_truth": n_truth,
        "n_detections": n_det,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "sensitivity": sens,
        "precision": prec,
        "f1": f1,
        "fp_avg": _ratio(fp, n_sub),
        "fp_cmb": _ratio(fp, n_truth),
        "count_pearson_r": count_pearson_r(ps["n_detections"].to_numpy(), ps["n_truth"].to_numpy()),
        "count_mae": float(np.mean(np.abs(ps["n_detections"] - ps["n_truth"])))
        if n_sub
        else float("nan"),
    }
    notes = []
    if n_truth == 0:
        notes.append("sensitivity and fp_cmb undefined: no ground-truth CMB")
    if n_det == 0:
        notes.append("precision undefined: no detection")
    if math.isnan(out["count_pearson_r"]):
        notes.append(
            "count_pearson_r undefined: fewer than 2 subjects or zero variance of the detected "
            "or true counts"
        )
    for col in [c[: -len("_evaluated")] for c in ps.columns if c.endswith("_evaluated")]:
        if f"{col}_correct" in ps.columns:
            n_eval = int(ps[f"{col}_evaluated"].sum())
            out[f"{col}_evaluated"] = n_eval
            out[f"{col}_accuracy"] = _ratio(int(ps[f"{col}_correct"].sum()), n_eval)
            if n_eval == 0:
                notes.append(f"{col}_accuracy undefined: no true positive with {col} on both sides")
    if "threshold" in ps.columns and ps["threshold"].nunique(dropna=False) == 1 and n_sub:
        out["threshold"] = float(ps["threshold"].iloc[0])
    out["notes"] = notes
    if by is not None and by in ps.columns:
        out[f"by_{by}"] = {str(k): cohort_metrics(g, by=None) for k, g in ps.groupby(by, sort=True)}
    return out


def metrics_by(per_subject: pd.DataFrame, by: str = "acquisition") -> pd.DataFrame:
    """Cohort metrics per group of ``by`` (e.g. acquisition type), one row each.

    Examples
    --------
    >>> ps = pd.DataFrame({"acquisition": ["swi", "gre", "swi"], "n_truth": [2, 2, 2],
    ...                    "n_detections": [2, 0, 2], "tp": [2, 0, 1], "fp": [0, 0, 1], "fn": [0, 2, 1]})
    >>> metrics_by(ps)[["acquisition", "n_subjects", "sensitivity"]].values.tolist()
    [['gre', 1, 0.0], ['swi', 2, 0.75]]
    """
    rows = []
    for key, group in per_subject.groupby(by, sort=True):
        m = cohort_metrics(group, by=None)
        m.pop("notes")
        rows.append({by: key, **m})
    return pd.DataFrame(rows)
