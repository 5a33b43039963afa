"""FROC analysis of a matched cohort: the exact curve, sensitivity at fixed FP rates,
the operating threshold, and the plot.

The curve is read from one threshold-free matching (:func:`cmb.evaluation.matching.match_cohort`):
the metrics at every distinct confidence, without matching again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cmb.atomic import atomic_path
from cmb.evaluation.matching import CohortMatch
from cmb.evaluation.metrics import rates_from_counts

__all__ = [
    "FROC_COLUMNS",
    "froc_curve",
    "sensitivity_at_fp",
    "choose_threshold",
    "plot_froc",
]

#: Columns of the FROC table.
FROC_COLUMNS = [
    "threshold",
    "sensitivity",
    "fp_avg",
    "precision",
    "f1",
    "tp",
    "fp",
    "fp_cmb",
    "n_detections",
]


def froc_curve(match: CohortMatch) -> pd.DataFrame:
    """Exact FROC: the cohort metrics at every distinct confidence threshold.

    Returns
    -------
    DataFrame
        :data:`FROC_COLUMNS`, by decreasing threshold. The first row is the
        endpoint ``threshold = inf`` (no detection kept: sensitivity 0, fp_avg 0);
        then one row per distinct confidence ``c`` (keeping ``confidence >= c``);
        the last row keeps every detection. Sensitivity and fp_avg never decrease
        down the table.

    Examples
    --------
    >>> truth = pd.DataFrame({"x_mm": [0.0], "y_mm": [0.0], "z_mm": [0.0]})
    >>> det = pd.DataFrame({"x_mm": [0.0, 40.0], "y_mm": [0.0] * 2, "z_mm": [0.0] * 2,
    ...                     "confidence": [0.9, 0.3]})
    >>> from cmb.evaluation.matching import match_cohort
    >>> froc_curve(match_cohort([("sub-1", "swi", det, truth)]))[["threshold", "sensitivity", "fp_avg"]]
       threshold  sensitivity  fp_avg
    0        inf          0.0     0.0
    1        0.9          1.0     0.0
    2        0.3          1.0     1.0
    """
    n_sub = len(match.subjects)
    n_truth = int(match.subjects["n_truth"].sum())
    conf = match.detections["confidence"].to_numpy(dtype=float)
    is_tp = match.detections["truth_id"].notna().to_numpy()
    order = np.lexsort((np.arange(conf.size), -conf))
    conf, is_tp = conf[order], is_tp[order]
    ctp = np.cumsum(is_tp)
    last = (
        np.r_[np.flatnonzero(np.diff(conf) != 0), conf.size - 1]
        if conf.size
        else np.array([], dtype=int)
    )
    thresholds = np.r_[np.inf, conf[last]]
    tp = np.r_[0, ctp[last]].astype(np.int64)
    n_det = np.r_[0, last + 1].astype(np.int64)
    fp = n_det - tp
    rates = np.array(
        [rates_from_counts(int(a), int(b), n_truth - int(a)) for a, b in zip(tp, fp)], dtype=float
    )
    return pd.DataFrame(
        {
            "threshold": thresholds,
            "sensitivity": rates[:, 0],
            "fp_avg": fp / n_sub if n_sub else np.full(fp.shape, np.nan),
            "precision": rates[:, 1],
            "f1": rates[:, 2],
            "tp": tp,
            "fp": fp,
            "fp_cmb": fp / n_truth if n_truth else np.full(fp.shape, np.nan),
            "n_detections": n_det,
        }
    )[FROC_COLUMNS]


def sensitivity_at_fp(
    froc: pd.DataFrame, fp_levels: Sequence[float] = (0.125, 0.25, 0.5, 1, 2, 4, 8)
) -> pd.DataFrame:
    """Highest sensitivity reached with at most each number of FP per subject.

    Returns
    -------
    DataFrame
        ``fp_avg`` (the level), ``sensitivity`` and the ``threshold`` giving it
        (the highest such threshold; ``inf`` when no detection may be kept).

    Examples
    --------
    >>> froc = pd.DataFrame({"threshold": [np.inf, 0.9, 0.5], "sensitivity": [0.0, 0.5, 0.75],
    ...                      "fp_avg": [0.0, 0.5, 2.0]})
    >>> sensitivity_at_fp(froc, [0.25, 1, 4])["sensitivity"].tolist()
    [0.0, 0.5, 0.75]
    """
    fp = froc["fp_avg"].to_numpy(dtype=float)
    sens = froc["sensitivity"].to_numpy(dtype=float)
    thr = froc["threshold"].to_numpy(dtype=float)
    rows = []
    for level in fp_levels:
        ok = np.flatnonzero(fp <= float(level) + 1e-12)
        if ok.size == 0 or np.all(np.isnan(sens[ok])):
            rows.append((float(level), float("nan"), float("nan")))
            continue
        best = ok[np.nanargmax(sens[ok])]  # first maximum: the highest threshold
        rows.append((float(level), float(sens[best]), float(thr[best])))
    return pd.DataFrame(rows, columns=["fp_avg", "sensitivity", "threshold"])


def choose_threshold(
    froc: pd.DataFrame, target_sensitivity: float | None = None, max_fp_avg: float | None = None
) -> float:
    """Operating threshold from a FROC table (:func:`froc_curve`).

    Parameters
    ----------
    froc : DataFrame
    target_sensitivity : float, optional
        The highest threshold whose sensitivity reaches the target.
    max_fp_avg : float, optional
        The lowest threshold whose false positives per scan stay within this budget
        (the most sensitive operating point the budget allows).

    With neither, the threshold maximizing F1 (ties: the higher threshold).

    Returns
    -------
    float
        ``inf`` only when there is no finite threshold (no detections).

    Raises
    ------
    ValueError
        When no threshold reaches ``target_sensitivity``, or F1 is undefined
        everywhere (no ground truth and no detections).

    Examples
    --------
    >>> froc = pd.DataFrame({"threshold": [np.inf, 0.9, 0.5, 0.2], "sensitivity": [0, 0.5, 0.5, 1.0],
    ...                      "f1": [0.0, 0.6, 0.6, 0.5]})
    >>> choose_threshold(froc), choose_threshold(froc, target_sensitivity=0.9)
    (0.9, 0.2)
    >>> froc["fp_avg"] = [0.0, 0.1, 0.4, 1.5]
    >>> choose_threshold(froc, max_fp_avg=0.5)
    0.5
    """
    thr = froc["threshold"].to_numpy(dtype=float)
    finite = np.isfinite(thr)
    if not finite.any():
        return float("inf")
    tab = froc[finite].sort_values("threshold", ascending=False, kind="stable")
    if target_sensitivity is not None and max_fp_avg is not None:
        raise ValueError("give a target sensitivity or a false-positive budget, not both")
    if max_fp_avg is not None:
        ok = tab["fp_avg"].to_numpy(dtype=float) <= float(max_fp_avg) + 1e-12
        if not ok.any():
            raise ValueError(
                f"no threshold keeps FPavg within {max_fp_avg} (lowest: {tab['fp_avg'].min():.4g})"
            )
        return float(tab["threshold"].to_numpy()[np.flatnonzero(ok)[-1]])
    if target_sensitivity is not None:
        ok = tab["sensitivity"].to_numpy(dtype=float) >= float(target_sensitivity) - 1e-12
        if not ok.any():
            raise ValueError(
                f"no threshold reaches sensitivity {target_sensitivity} "
                f"(highest: {tab['sensitivity'].max():.4g})"
            )
        return float(tab["threshold"].to_numpy()[np.argmax(ok)])
    f1 = tab["f1"].to_numpy(dtype=float)
    if np.all(np.isnan(f1)):
        raise ValueError("F1 is undefined at every threshold (no ground truth and no detection)")
    return float(tab["threshold"].to_numpy()[np.nanargmax(f1)])  # first maximum = highest threshold


def plot_froc(
    froc: pd.DataFrame, path, *, operating_threshold: float | None = None, title: str | None = None
) -> None:
    """Draw sensitivity vs FP per subject (PNG or SVG by extension), atomically.

    Uses matplotlib's Agg canvas directly: no global backend is set.
    """
    # lazy: matplotlib takes ~1 s to import; only the FROC plot needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(froc["fp_avg"], froc["sensitivity"], "-o", ms=3, lw=1.5, color="tab:blue", label="FROC")
    if operating_threshold is not None:
        # metrics at threshold t are those of the lowest listed threshold >= t
        row = froc[froc["threshold"].to_numpy(dtype=float) >= operating_threshold].tail(1)
        if len(row):
            ax.plot(
                row["fp_avg"],
                row["sensitivity"],
                "s",
                color="tab:red",
                ms=7,
                label=f"threshold {operating_threshold:.3g}",
            )
    ax.set_xlabel("false positives per subject (FPavg)")
    ax.set_ylabel("sensitivity")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")
