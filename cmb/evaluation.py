"""Lesion-level evaluation of CMB detections: matching, metrics, FROC, output files.

Every tool of this project (training validation, benchmarks, ``cmb evaluate``)
scores detections with this module, so that all of them agree.

Matching (``docs/evaluation.md``; ``../shared/docs/background.md``, "Definitions")
---------------------------------------------------------------------------------
- A detection is a point: its centroid ``x_mm, y_mm, z_mm`` (scanner RAS, mm) and a
  ``confidence``. Detections below the confidence threshold are ignored (a detection
  whose confidence equals the threshold is kept).
- A ground-truth CMB with a mask (one label of a label image) is hit by a detection
  whose centroid lies in that mask dilated by ``margin_mm`` (2 mm). The dilation is
  in millimetres on the voxel grid (a Euclidean distance transform with
  ``sampling`` = voxel sizes), so on 0.5 x 0.5 x 2 mm voxels it reaches 4 voxels
  in-plane and 1 slice. The centroid "lies in" the dilated mask when the voxel
  containing it (nearest voxel centre) does; the grid is virtually extended past
  the image edge.
- A ground-truth CMB given as a point (a table row without a mask) is hit by a
  detection within ``max(min_point_radius_mm, radius_mm + margin_mm)``
  (``max(3, radius + 2)`` mm) of its centre; ``radius_mm`` defaults to 0.
- Detections are processed by decreasing confidence (ties: input row order). Each
  takes, among the CMBs it hits that are not matched yet, the one whose centre is
  nearest to its centroid (ties: lowest truth id); a CMB is matched at most once.
  Detections that take no CMB are false positives; unmatched CMBs are false
  negatives.

Because the matching is greedy in confidence order, the matching at threshold
``t`` is exactly the full matching restricted to detections with confidence
``>= t``. :func:`match_cohort` therefore matches once, and every threshold (the
per-subject table, the FROC curve) is read from that one matching.

Inputs are plain data: detections are a :class:`pandas.DataFrame`; truth is a
label image (nibabel image, or an array plus affine, optionally with a table of
centres and attributes) or a point table (:func:`as_truth`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from cmb.annotations import derivative_scans, find_scans, is_nifti
from cmb.atomic import atomic_path, write_json, write_text

__all__ = [
    "MARGIN_MM",
    "MIN_POINT_RADIUS_MM",
    "LOCATION_COLUMNS",
    "SUBJECT_COLUMNS",
    "FROC_COLUMNS",
    "Truth",
    "SubjectMatch",
    "CohortMatch",
    "truth_from_labels",
    "truth_from_points",
    "as_truth",
    "load_truth",
    "truth_from_verdicts",
    "read_detections",
    "match_detections",
    "match_subject",
    "match_cohort",
    "subject_table",
    "count_pearson_r",
    "cohort_metrics",
    "metrics_by",
    "froc_curve",
    "sensitivity_at_fp",
    "choose_threshold",
    "recorded_threshold",
    "evaluate_cohort",
    "write_subject_csv",
    "write_cohort",
    "write_froc",
    "plot_froc",
    "write_evaluation",
    "build_parser",
    "run",
    "main",
]

#: Dilation of ground-truth masks, and margin added to point radii (mm).
MARGIN_MM = 2.0
#: Smallest matching radius around a point annotation (mm).
MIN_POINT_RADIUS_MM = 3.0
#: Optional columns compared between a true positive and its CMB (localization accuracy).
LOCATION_COLUMNS = ("mars_category", "mars_region", "hemisphere")
#: Leading columns of the per-subject table (localization columns follow when available).
SUBJECT_COLUMNS = ["subject", "acquisition", "threshold", "n_truth", "n_detections", "tp", "fp", "fn",
                   "sensitivity", "precision", "f1", "count_error"]
#: Columns of the FROC table.
FROC_COLUMNS = ["threshold", "sensitivity", "fp_avg", "precision", "f1", "tp", "fp", "fp_cmb", "n_detections"]

_EPS_MM = 1e-6  # boundary tolerance: a point exactly at the matching distance matches
_XYZ = ["x_mm", "y_mm", "z_mm"]
_ID_COLUMNS = ("truth_id", "index", "id")  # accepted names of a truth table's id column, in order


# --------------------------------------------------------------------------- truth
@dataclass(frozen=True)
class Truth:
    """Ground-truth CMBs of one scan.

    Attributes
    ----------
    table : DataFrame
        One row per CMB, sorted by ``truth_id`` (int): ``x_mm, y_mm, z_mm`` (centre,
        scanner RAS), ``radius_mm`` (point rule), ``has_mask`` (bool: matched against
        its dilated mask, else by the point rule), plus any extra columns given
        (e.g. ``mars_region``).
    labels : (X, Y, Z) ndarray of int, optional
        Label image; voxels of CMB ``truth_id`` hold that value, background 0.
    affine : (4, 4) ndarray, optional
        Voxel-to-scanner (RAS mm) transform of ``labels``.
    non_cmb : DataFrame, optional
        Reviewers' verdicts only (:mod:`cmb.verdicts`): ``x_mm, y_mm, z_mm, radius_mm`` of the
        places a reviewer rejected. Then only the candidates that hit a CMB or one of
        these were reviewed; the others are unknown, not negatives. None for complete
        ground truth (every candidate that hits no CMB is a negative).
    """

    table: pd.DataFrame
    labels: np.ndarray | None = None
    affine: np.ndarray | None = None
    boxes: dict = field(default_factory=dict, repr=False)  # truth_id -> bounding box slices in labels
    non_cmb: pd.DataFrame | None = None

    @property
    def n(self) -> int:
        """Number of ground-truth CMBs."""
        return len(self.table)


def _truth_ids(table: pd.DataFrame) -> np.ndarray:
    for col in _ID_COLUMNS:
        if col in table.columns:
            ids = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=float)
            if not np.all(np.isfinite(ids)) or np.any(ids != np.round(ids)):
                raise ValueError(f"truth table column {col!r} must hold integer ids")
            return ids.astype(np.int64)
    return np.arange(1, len(table) + 1, dtype=np.int64)


def _check_columns(table: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(missing)} (has: {', '.join(map(str, table.columns))})")


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what} must be finite numbers")
    return values


def truth_from_points(table: pd.DataFrame) -> Truth:
    """Ground truth from point annotations.

    Parameters
    ----------
    table : DataFrame
        One row per CMB: ``x_mm, y_mm, z_mm`` (scanner RAS), optional ``radius_mm``
        (missing or NaN: 0), optional id column (``truth_id``, ``index`` or ``id``;
        default 1..n) and any attribute columns (``mars_region``...).

    Returns
    -------
    Truth
        Every CMB is matched by the point rule.

    Examples
    --------
    >>> t = truth_from_points(pd.DataFrame({"x_mm": [0.0], "y_mm": [0.0], "z_mm": [0.0]}))
    >>> t.table[["truth_id", "radius_mm", "has_mask"]].values.tolist()
    [[1, 0.0, False]]
    """
    table = pd.DataFrame(table).reset_index(drop=True)
    _check_columns(table, _XYZ, "truth point table")
    out = table.drop(columns=[c for c in (*_ID_COLUMNS, "has_mask") if c in table.columns])
    out.insert(0, "truth_id", _truth_ids(table))
    if out["truth_id"].duplicated().any():
        raise ValueError("truth ids must be unique")
    out[_XYZ] = _finite(out[_XYZ].to_numpy(), "truth coordinates")
    radius = pd.to_numeric(out["radius_mm"], errors="coerce") if "radius_mm" in out else pd.Series(0.0, out.index)
    out["radius_mm"] = radius.fillna(0.0).astype(float)
    out["has_mask"] = False
    return Truth(out.sort_values("truth_id", kind="stable").reset_index(drop=True))


def truth_from_labels(labels, affine=None, table: pd.DataFrame | None = None, *,
                      split_components: bool = False) -> Truth:
    """Ground truth from a label image (one label per CMB), optionally with a CMB table.

    Parameters
    ----------
    labels : nibabel image or (X, Y, Z) array of int
        0 is background; each positive value is one CMB (its ``truth_id``).
    affine : (4, 4) array, optional
        Voxel-to-scanner transform; required for a plain array, and overrides an
        image's own affine.
    table : DataFrame, optional
        Rows keyed by ``index`` (or ``truth_id``/``id``) = label value, with
        ``x_mm, y_mm, z_mm`` centres and optional ``radius_mm`` and attributes, such
        as the synthetic ``*_label-CMB_dseg.tsv``. Its centres replace the label
        centroids; a row whose label has no voxel is matched by the point rule.
    split_components : bool, optional
        Treat ``labels`` as a binary mask (any positive value) and make each
        26-connected component one CMB, numbered 1..n in scan order (for
        binary annotations such as VALDO's). Incompatible with ``table``.

    Returns
    -------
    Truth
        Without a table, each CMB's centre is the centroid of its voxels.

    Examples
    --------
    >>> lab = np.zeros((5, 5, 5), dtype=int)
    >>> lab[1, 1, 1] = lab[3, 1, 1] = 7
    >>> truth_from_labels(lab, np.eye(4)).table[["truth_id", "x_mm", "has_mask"]].values.tolist()
    [[7, 2.0, True]]
    """
    if hasattr(labels, "dataobj"):
        if affine is None:
            affine = labels.affine
        labels = np.asanyarray(labels.dataobj)
    if affine is None:
        raise ValueError("a label array needs its affine (voxel-to-scanner transform)")
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError("affine must be a finite 4 x 4 matrix")
    data = np.asarray(labels)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"the label image must be 3D, got shape {data.shape}")
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise ValueError("the label image must hold integer labels")
    elif data.dtype.kind not in "iub":
        raise ValueError(f"the label image must hold integer labels, got dtype {data.dtype}")
    if data.size and data.min() < 0:
        raise ValueError("labels must be >= 0 (0 is background)")
    data = data.astype(np.int32 if not data.size or data.max() < 2**31 else np.int64, copy=False)
    if split_components:
        if table is not None:
            raise ValueError("split_components relabels the mask: a table keyed by label cannot be used with it")
        data = ndi.label(data > 0, structure=np.ones((3, 3, 3), dtype=bool))[0].astype(np.int32)
    boxes = {i + 1: box for i, box in enumerate(ndi.find_objects(data)) if box is not None}
    rows = []
    for tid, box in boxes.items():
        vox = np.argwhere(data[box] == tid).mean(axis=0) + [s.start for s in box]
        rows.append((tid, *(affine[:3, :3] @ vox + affine[:3, 3])))
    centroids = pd.DataFrame(rows, columns=["truth_id", *_XYZ])
    if table is None:
        out = centroids.assign(radius_mm=0.0, has_mask=True)
    else:
        points = truth_from_points(table).table.drop(columns="has_mask")
        extra = centroids[~centroids["truth_id"].isin(points["truth_id"])].assign(radius_mm=0.0)
        out = pd.concat([points, extra], ignore_index=True) if len(extra) else points
        out["has_mask"] = out["truth_id"].isin(list(boxes))
    out = out.sort_values("truth_id", kind="stable").reset_index(drop=True)
    out["truth_id"] = out["truth_id"].astype(np.int64)
    return Truth(out, data, affine, boxes)


def _table_sep(path: Path) -> str:
    return "," if path.suffix == ".csv" else "\t"


def load_truth(path, *, split_components: bool = False) -> Truth:
    """Read ground truth from a file.

    ``*.nii``/``*.nii.gz``: a label image; a sibling table with the same name and
    ``.tsv`` (such as the synthetic ``*_label-CMB_dseg.tsv``) is read too when it
    exists, unless ``split_components`` (a binary mask, one CMB per connected
    component: :func:`truth_from_labels`). ``*.tsv``/``*.csv``: point annotations only;
    a table with a ``verdict`` column is a reviewer's verdict file: it is read with
    every other reviewer's file of the same scan beside it (:func:`truth_from_verdicts`).
    """
    path = Path(path)
    if is_nifti(path):
        if split_components:
            return truth_from_labels(nib.load(path), split_components=True)
        tsv = path.with_name(re.sub(r"\.nii(\.gz)?$", ".tsv", path.name))
        table = pd.read_csv(tsv, sep="\t") if tsv.exists() else None
        return truth_from_labels(nib.load(path), table=table)
    if path.suffix == ".tsv" and _is_verdict_table(path):
        from cmb.verdicts import read_verdicts, scan_verdict_files

        return truth_from_verdicts([read_verdicts(p) for p in scan_verdict_files(path)])
    return truth_from_points(pd.read_csv(path, sep=_table_sep(path)))


def truth_from_verdicts(tables) -> Truth:
    """Ground truth from reviewers' verdicts on one scan (one table per reviewer, :mod:`cmb.verdicts`).

    The reviewers' consensus: ``accept`` and ``added`` rows are CMBs (point rule);
    ``reject`` rows go to :attr:`Truth.non_cmb`; ``unsure`` rows and ties are left out.

    >>> v = pd.DataFrame({"x_mm": [0.0, 30.0, 60.0], "y_mm": [0.0] * 3, "z_mm": [0.0] * 3,
    ...                   "verdict": ["accept", "reject", "unsure"], "reason": ["n/a", "vein", "n/a"]})
    >>> t = truth_from_verdicts([v])
    >>> t.n, t.non_cmb["x_mm"].tolist()
    (1, [30.0])
    """
    from cmb.verdicts import CMB_VERDICTS, NON_CMB_VERDICTS, consensus

    cons = consensus(list(tables))
    cmb = cons[cons["verdict"].isin(CMB_VERDICTS)]
    truth = truth_from_points(cmb[[*_XYZ, "verdict", "reviewer"]].assign(
        radius_mm=pd.to_numeric(cmb["radius_mm"], errors="coerce").fillna(0.0)))
    non = cons[cons["verdict"].isin(NON_CMB_VERDICTS)]
    non = non[_XYZ].astype(float).assign(radius_mm=pd.to_numeric(non["radius_mm"], errors="coerce").fillna(0.0))
    return Truth(truth.table, non_cmb=non.reset_index(drop=True))


def _is_verdict_table(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        return "verdict" in f.readline().rstrip("\r\n").split("\t")


def as_truth(obj) -> Truth:
    """Normalize any accepted truth form to :class:`Truth`.

    Accepted: a :class:`Truth`; a DataFrame (point table); a nibabel image; a tuple
    ``(labels, affine)`` or ``(labels, affine, table)``; a path (:func:`load_truth`).
    """
    if isinstance(obj, Truth):
        return obj
    if isinstance(obj, pd.DataFrame):
        return truth_from_points(obj)
    if hasattr(obj, "dataobj"):
        return truth_from_labels(obj)
    if isinstance(obj, tuple) and len(obj) in (2, 3):
        return truth_from_labels(*obj)
    if isinstance(obj, (str, Path)):
        return load_truth(obj)
    raise TypeError(f"cannot read ground truth from {type(obj).__name__}")


# ---------------------------------------------------------------------- detections
def _as_detections(detections) -> pd.DataFrame:
    """Validated copy with ``detection_id`` first; no rows when ``detections`` is None."""
    if detections is None:
        detections = pd.DataFrame(columns=[*_XYZ, "confidence"])
    det = pd.DataFrame(detections).reset_index(drop=True)
    _check_columns(det, [*_XYZ, "confidence"], "detections")
    if "detection_id" in det.columns:
        ids = det.pop("detection_id")
    elif "id" in det.columns:
        ids = det.pop("id")
    else:
        ids = pd.Series(np.arange(len(det)), dtype=np.int64)
    if ids.duplicated().any():
        raise ValueError("detection ids must be unique")
    det.insert(0, "detection_id", ids.to_numpy())
    det = det.drop(columns=[c for c in ("truth_id", "distance_mm") if c in det.columns])
    det[_XYZ] = _finite(det[_XYZ].to_numpy(), "detection coordinates")
    det["confidence"] = _finite(det["confidence"].to_numpy(), "detection confidences")
    return det


def read_detections(path) -> pd.DataFrame:
    """Read a detections table (TSV, or CSV by extension) with ``x_mm, y_mm, z_mm, confidence``.

    An empty (0-byte) file is an error: it is the placeholder of a failed stage
    (:mod:`cmb.failures`), not "no detections" (that is a header-only table).
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (placeholder of a failed stage?), not a detections table")
    table = pd.read_csv(path, sep=_table_sep(path))
    if "rejected" in table.columns:  # the anatomical filter's rejections are not detections
        table = table[~table["rejected"].astype(str).str.lower().isin(["true", "1"])]
    return _as_detections(table)


# ------------------------------------------------------------------------ matching
def _hits(points: np.ndarray, truth: Truth, margin_mm: float, min_point_radius_mm: float):
    """(n, m) boolean "detection i hits CMB j" and (n, m) centre distances (mm)."""
    tab = truth.table
    centres = tab[_XYZ].to_numpy(dtype=float)
    dist = np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=-1)
    reach = np.maximum(min_point_radius_mm, tab["radius_mm"].to_numpy(dtype=float) + margin_mm)
    hits = dist <= reach[None, :] + _EPS_MM
    has_mask = tab["has_mask"].to_numpy(dtype=bool)
    if has_mask.any() and len(points):
        ijk = np.rint(np.c_[points, np.ones(len(points))] @ np.linalg.inv(truth.affine).T)[:, :3].astype(np.int64)
        zooms = nib.affines.voxel_sizes(truth.affine)
        pad = np.ceil(margin_mm / zooms).astype(np.int64) + 1
        shape = np.asarray(truth.labels.shape)
        for j in np.flatnonzero(has_mask):
            tid = int(tab["truth_id"].iat[j])
            box = truth.boxes[tid]
            lo = np.array([s.start for s in box]) - pad
            hi = np.array([s.stop for s in box]) + pad
            crop = np.zeros(hi - lo, dtype=bool)  # grid extended past the image edge
            src_lo, src_hi = np.maximum(lo, 0), np.minimum(hi, shape)
            src = tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
            dst = tuple(slice(a, b) for a, b in zip(src_lo - lo, src_hi - lo))
            crop[dst] = truth.labels[src] == tid
            dilated = ndi.distance_transform_edt(~crop, sampling=zooms) <= margin_mm + _EPS_MM
            rel = ijk - lo
            ok = np.all((rel >= 0) & (rel < dilated.shape), axis=1)
            col = np.zeros(len(points), dtype=bool)
            col[ok] = dilated[tuple(rel[ok].T)]
            hits[:, j] = col
    return hits, dist


def match_detections(detections, truth, *, margin_mm: float = MARGIN_MM,
                     min_point_radius_mm: float = MIN_POINT_RADIUS_MM) -> pd.DataFrame:
    """Match every detection of one scan to the ground truth (no threshold).

    Parameters
    ----------
    detections : DataFrame or None
        ``x_mm, y_mm, z_mm, confidence`` and optionally ``id`` (or ``detection_id``;
        default: row position 0..n-1) and attribute columns. None: no detections.
    truth : Truth or any form accepted by :func:`as_truth`
    margin_mm, min_point_radius_mm : float, optional
        Mask dilation / point-rule margin, and smallest point-rule radius.

    Returns
    -------
    DataFrame
        The detections in input order, ``detection_id`` first, with ``truth_id``
        (nullable Int64; <NA> for a false positive) and ``distance_mm`` (centroid
        to CMB centre; NaN for a false positive). Restricting the rows to
        ``confidence >= t`` gives the matching at threshold ``t``.

    Examples
    --------
    Two detections on one point CMB: the more confident one wins, though farther.

    >>> truth = pd.DataFrame({"x_mm": [0.0], "y_mm": [0.0], "z_mm": [0.0]})
    >>> det = pd.DataFrame({"x_mm": [0.5, 2.0], "y_mm": [0.0, 0.0], "z_mm": [0.0, 0.0],
    ...                     "confidence": [0.6, 0.9]})
    >>> match_detections(det, truth)["truth_id"].tolist()
    [<NA>, 1]
    """
    det = _as_detections(detections)
    truth = as_truth(truth)
    points = det[_XYZ].to_numpy(dtype=float)
    hits, dist = _hits(points, truth, margin_mm, min_point_radius_mm)
    ids = truth.table["truth_id"].to_numpy()
    matched = np.full(len(det), -1, dtype=np.int64)
    taken = np.zeros(truth.n, dtype=bool)
    conf = det["confidence"].to_numpy(dtype=float)
    for i in np.lexsort((np.arange(len(det)), -conf)):  # confidence descending, then row order
        cand = np.flatnonzero(hits[i] & ~taken)
        if cand.size:
            j = cand[np.argmin(dist[i, cand])]  # first minimum: lowest truth id on ties
            taken[j] = True
            matched[i] = j
    det["truth_id"] = pd.array([int(ids[j]) if j >= 0 else pd.NA for j in matched], dtype="Int64")
    det["distance_mm"] = [float(dist[i, j]) if j >= 0 else np.nan for i, j in enumerate(matched)]
    det["distance_mm"] = det["distance_mm"].astype(float)
    return det


@dataclass(frozen=True)
class SubjectMatch:
    """Matching of one scan at one threshold (:func:`match_subject`).

    Attributes
    ----------
    detections : DataFrame
        Detections kept (``confidence >= threshold``) with ``truth_id`` and ``distance_mm``.
    truth : DataFrame
        :attr:`Truth.table` plus ``detection_id`` (the matched detection, or <NA>).
    pairs : DataFrame
        One row per true positive: ``truth_id, detection_id, distance_mm, confidence``.
    threshold : float or None
    """

    detections: pd.DataFrame
    truth: pd.DataFrame
    pairs: pd.DataFrame
    threshold: float | None = None

    @property
    def tp(self) -> int:
        """True positives (matched pairs)."""
        return len(self.pairs)

    @property
    def fp(self) -> int:
        """False positives: kept detections without a CMB."""
        return len(self.detections) - self.tp

    @property
    def fn(self) -> int:
        """False negatives: CMBs without a detection."""
        return len(self.truth) - self.tp


def _keep(det: pd.DataFrame, threshold) -> pd.DataFrame:
    if threshold is None:
        return det
    return det[det["confidence"].to_numpy(dtype=float) >= float(threshold)]


def match_subject(detections, truth, threshold: float | None = None, **kwargs) -> SubjectMatch:
    """TP, FP, FN and matched pairs of one scan at a confidence threshold.

    Parameters
    ----------
    detections, truth
        As for :func:`match_detections` (which receives ``kwargs``).
    threshold : float, optional
        Detections with ``confidence < threshold`` are ignored; None keeps all.

    Returns
    -------
    SubjectMatch

    Examples
    --------
    >>> truth = pd.DataFrame({"x_mm": [0.0, 20.0], "y_mm": [0.0, 0.0], "z_mm": [0.0, 0.0]})
    >>> det = pd.DataFrame({"x_mm": [1.0, 50.0, 20.0], "y_mm": [0.0] * 3, "z_mm": [0.0] * 3,
    ...                     "confidence": [0.9, 0.8, 0.1]})
    >>> m = match_subject(det, truth, threshold=0.5)
    >>> m.tp, m.fp, m.fn
    (1, 1, 1)
    """
    truth = as_truth(truth)
    det = _keep(match_detections(detections, truth, **kwargs), threshold)
    tp = det[det["truth_id"].notna()]
    pairs = pd.DataFrame({
        "truth_id": tp["truth_id"].astype(np.int64).to_numpy(),
        "detection_id": tp["detection_id"].to_numpy(),
        "distance_mm": tp["distance_mm"].to_numpy(dtype=float),
        "confidence": tp["confidence"].to_numpy(dtype=float),
    }).sort_values("truth_id", kind="stable").reset_index(drop=True)
    tab = truth.table.copy()
    lookup = dict(zip(pairs["truth_id"], pairs["detection_id"]))
    tab["detection_id"] = pd.Series([lookup.get(t, pd.NA) for t in tab["truth_id"]], index=tab.index, dtype=object)
    return SubjectMatch(det.reset_index(drop=True), tab, pairs, threshold)


@dataclass(frozen=True)
class CohortMatch:
    """Threshold-free matching of a cohort (:func:`match_cohort`).

    Attributes
    ----------
    subjects : DataFrame
        One row per scan, in input order: ``subject, acquisition, n_truth``.
    detections : DataFrame
        Every detection: ``subject, acquisition`` then the :func:`match_detections` columns.
    truth : DataFrame
        Every CMB: ``subject, acquisition`` then the :attr:`Truth.table` columns.
    margin_mm, min_point_radius_mm : float
        Matching settings used.
    """

    subjects: pd.DataFrame
    detections: pd.DataFrame
    truth: pd.DataFrame
    margin_mm: float = MARGIN_MM
    min_point_radius_mm: float = MIN_POINT_RADIUS_MM


def match_cohort(pairs: Iterable, *, margin_mm: float = MARGIN_MM,
                 min_point_radius_mm: float = MIN_POINT_RADIUS_MM) -> CohortMatch:
    """Match every scan of a cohort once (all detections, no threshold).

    Parameters
    ----------
    pairs : iterable of (subject, acquisition, detections, truth)
        ``subject``: a unique scan id (e.g. ``sub-01_ses-1``); ``acquisition``: a
        label for the per-acquisition breakdown (e.g. ``swi-3t``); ``detections``
        and ``truth`` as for :func:`match_detections`.
    margin_mm, min_point_radius_mm : float, optional
        Matching settings.

    Returns
    -------
    CohortMatch
    """
    subjects, dets, truths = [], [], []
    for item in pairs:
        subject, acquisition, detections, truth = item
        subject, acquisition = str(subject), str(acquisition)
        truth = as_truth(truth)
        det = match_detections(detections, truth, margin_mm=margin_mm, min_point_radius_mm=min_point_radius_mm)
        subjects.append((subject, acquisition, truth.n))
        dets.append(det.assign(subject=subject, acquisition=acquisition))
        truths.append(truth.table.assign(subject=subject, acquisition=acquisition))
    subj = pd.DataFrame(subjects, columns=["subject", "acquisition", "n_truth"]).astype({"n_truth": np.int64})
    if subj["subject"].duplicated().any():
        dup = subj.loc[subj["subject"].duplicated(), "subject"].tolist()
        raise ValueError(f"duplicate subject ids: {', '.join(dup)}")

    def stack(frames, empty_cols):
        frames = [f for f in frames if len(f)]
        out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=empty_cols)
        front = ["subject", "acquisition"]
        return out[front + [c for c in out.columns if c not in front]]

    det = stack(dets, ["subject", "acquisition", "detection_id", *_XYZ, "confidence", "truth_id", "distance_mm"])
    det["confidence"] = det["confidence"].astype(float)
    det["truth_id"] = det["truth_id"].astype("Int64")
    tru = stack(truths, ["subject", "acquisition", "truth_id", *_XYZ, "radius_mm", "has_mask"])
    return CohortMatch(subj, det, tru, margin_mm, min_point_radius_mm)


# ------------------------------------------------------------------------- metrics
def _ratio(num, den) -> float:
    return float(num) / float(den) if den else float("nan")


def _rates(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Sensitivity, precision, F1 = 2TP / (2TP + FP + FN); NaN where the denominator is 0."""
    return _ratio(tp, tp + fn), _ratio(tp, tp + fp), _ratio(2 * tp, 2 * tp + fp + fn)


def _norm_label(v):
    return str(v).strip().casefold()


def subject_table(match: CohortMatch, threshold: float | None = None,
                  location_columns: Sequence[str] = LOCATION_COLUMNS) -> pd.DataFrame:
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
    det = _keep(match.detections, threshold)
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
    rates = np.array([_rates(*r) for r in out[["tp", "fp", "fn"]].itertuples(index=False)], dtype=float)
    for k, name in enumerate(("sensitivity", "precision", "f1")):
        out[name] = rates.reshape(-1, 3)[:, k]
    out["count_error"] = out["n_detections"] - out["n_truth"]
    for col in location_columns:
        if col not in match.detections.columns or col not in match.truth.columns:
            continue
        tru = match.truth[["subject", "truth_id", col]].rename(columns={col: "_truth_value"})
        tru = tru.astype({"truth_id": np.int64})
        joined = tp_rows[["subject", "truth_id", col]].astype({"truth_id": np.int64}).merge(
            tru, on=["subject", "truth_id"], how="left")
        both = joined[col].notna() & joined["_truth_value"].notna()
        joined = joined[both]
        correct = joined[col].map(_norm_label) == joined["_truth_value"].map(_norm_label)
        out[f"{col}_evaluated"] = out["subject"].map(joined.groupby("subject").size()).fillna(0).astype(np.int64)
        out[f"{col}_correct"] = out["subject"].map(correct.groupby(joined["subject"]).sum()).fillna(0).astype(np.int64)
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
    _check_columns(per_subject, ["n_truth", "n_detections", "tp", "fp", "fn"], "per-subject table")
    ps = per_subject
    n_sub = len(ps)
    tp, fp, fn, n_truth, n_det = (int(ps[c].sum()) for c in ("tp", "fp", "fn", "n_truth", "n_detections"))
    sens, prec, f1 = _rates(tp, fp, fn)
    out = {
        "n_subjects": n_sub, "n_truth": n_truth, "n_detections": n_det, "tp": tp, "fp": fp, "fn": fn,
        "sensitivity": sens, "precision": prec, "f1": f1,
        "fp_avg": _ratio(fp, n_sub), "fp_cmb": _ratio(fp, n_truth),
        "count_pearson_r": count_pearson_r(ps["n_detections"].to_numpy(), ps["n_truth"].to_numpy()),
        "count_mae": float(np.mean(np.abs(ps["n_detections"] - ps["n_truth"]))) if n_sub else float("nan"),
    }
    notes = []
    if n_truth == 0:
        notes.append("sensitivity and fp_cmb undefined: no ground-truth CMB")
    if n_det == 0:
        notes.append("precision undefined: no detection")
    if math.isnan(out["count_pearson_r"]):
        notes.append("count_pearson_r undefined: fewer than 2 subjects or zero variance of the detected "
                     "or true counts")
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


# ---------------------------------------------------------------------------- FROC
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
    last = np.r_[np.flatnonzero(np.diff(conf) != 0), conf.size - 1] if conf.size else np.array([], dtype=int)
    thresholds = np.r_[np.inf, conf[last]]
    tp = np.r_[0, ctp[last]].astype(np.int64)
    n_det = np.r_[0, last + 1].astype(np.int64)
    fp = n_det - tp
    rates = np.array([_rates(int(a), int(b), n_truth - int(a)) for a, b in zip(tp, fp)], dtype=float)
    return pd.DataFrame({
        "threshold": thresholds, "sensitivity": rates[:, 0],
        "fp_avg": fp / n_sub if n_sub else np.full(fp.shape, np.nan),
        "precision": rates[:, 1], "f1": rates[:, 2], "tp": tp, "fp": fp,
        "fp_cmb": fp / n_truth if n_truth else np.full(fp.shape, np.nan), "n_detections": n_det,
    })[FROC_COLUMNS]


def sensitivity_at_fp(froc: pd.DataFrame, fp_levels: Sequence[float] = (0.125, 0.25, 0.5, 1, 2, 4, 8)) -> pd.DataFrame:
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


def choose_threshold(froc: pd.DataFrame, target_sensitivity: float | None = None,
                     max_fp_avg: float | None = None) -> float:
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
            raise ValueError(f"no threshold keeps FPavg within {max_fp_avg} (lowest: {tab['fp_avg'].min():.4g})")
        return float(tab["threshold"].to_numpy()[np.flatnonzero(ok)[-1]])
    if target_sensitivity is not None:
        ok = tab["sensitivity"].to_numpy(dtype=float) >= float(target_sensitivity) - 1e-12
        if not ok.any():
            raise ValueError(f"no threshold reaches sensitivity {target_sensitivity} "
                             f"(highest: {tab['sensitivity'].max():.4g})")
        return float(tab["threshold"].to_numpy()[np.argmax(ok)])
    f1 = tab["f1"].to_numpy(dtype=float)
    if np.all(np.isnan(f1)):
        raise ValueError("F1 is undefined at every threshold (no ground truth and no detection)")
    return float(tab["threshold"].to_numpy()[np.nanargmax(f1)])  # first maximum = highest threshold


# ------------------------------------------------------------------------- writers
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
    rows = [{"group": g, **{k: v for k, v in m.items() if not isinstance(v, (dict, list))}} for g, m in groups]
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


def plot_froc(froc: pd.DataFrame, path, *, operating_threshold: float | None = None, title: str | None = None) -> None:
    """Draw sensitivity vs FP per subject (PNG or SVG by extension), atomically.

    Uses matplotlib's Agg canvas directly: no global backend is set.
    """
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
            ax.plot(row["fp_avg"], row["sensitivity"], "s", color="tab:red", ms=7,
                    label=f"threshold {operating_threshold:.3g}")
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


def write_froc(froc: pd.DataFrame, csv_path, png_path=None, *, operating_threshold: float | None = None) -> None:
    """Write the FROC table as CSV (``threshold`` of the endpoint: ``inf``) and optionally its plot."""
    write_text(csv_path, froc.to_csv(index=False))
    if png_path is not None:
        plot_froc(froc, png_path, operating_threshold=operating_threshold)


def evaluate_cohort(pairs: Iterable, threshold: float | None = None, *, margin_mm: float = MARGIN_MM,
                    min_point_radius_mm: float = MIN_POINT_RADIUS_MM,
                    location_columns: Sequence[str] = LOCATION_COLUMNS) -> tuple[pd.DataFrame, dict]:
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
    cohort.update(margin_mm=float(match.margin_mm), min_point_radius_mm=float(match.min_point_radius_mm))
    return per_subject, cohort


def write_evaluation(out_dir, match: CohortMatch, threshold: float | None,
                     location_columns: Sequence[str] = LOCATION_COLUMNS) -> dict[str, Path]:
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
    paths = {name: out / name for name in
             ("subjects.csv", "cohort.csv", "cohort.json", "froc.csv", "froc.png", "detections.csv")}
    per_subject, cohort = _evaluate(match, threshold, location_columns)
    froc = froc_curve(match)
    write_subject_csv(per_subject, paths["subjects.csv"])
    write_cohort(cohort, paths["cohort.csv"], paths["cohort.json"])
    write_froc(froc, paths["froc.csv"], paths["froc.png"], operating_threshold=threshold)
    det = match.detections.copy()
    det["kept"] = True if threshold is None else det["confidence"].to_numpy(dtype=float) >= float(threshold)
    write_text(paths["detections.csv"], det.to_csv(index=False))
    return paths


# ------------------------------------------------------------------------------ CLI
def recorded_threshold(tables) -> float | None:
    """The operating threshold the detect stage recorded for these scans (``*_desc-candidates_cmb.json``).

    None when no scan has one (tables of other tools); a ValueError when scans were
    detected with different thresholds.
    """
    found = {}
    for table in tables:
        if table is None:
            continue
        table = Path(table)
        sidecar = table.parent / f"{table.name.split('_desc-')[0]}_desc-candidates_cmb.json"
        try:
            found[sidecar] = float(json.loads(sidecar.read_text())["threshold"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    values = sorted(set(found.values()))
    if len(values) > 1:
        raise ValueError(f"the scans were detected with {len(values)} different thresholds ({', '.join(map(repr, values[:4]))}); "
                         "give --threshold")
    return values[0] if values else None


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the evaluation command (also usable as a ``cmb evaluate`` subparser)."""
    p = parser or argparse.ArgumentParser(
        prog="python -m cmb.evaluation",
        description="Lesion-level evaluation of CMB detections against ground truth (docs/evaluation.md).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--detections", type=Path, help="folder of per-scan detection TSVs (named by sub/ses/run)")
    src.add_argument("--derivatives", type=Path,
                     help="a cmb workflow output folder: each scan's table (--table-suffix) is paired with the truth "
                          "of the raw input its ingest report names")
    p.add_argument("--table-suffix", default="desc-candidates_cmb.tsv",
                   help="with --derivatives: the per-scan table to score (default: %(default)s); "
                        "rows with rejected=true are left out")
    p.add_argument("--truth", required=True, type=Path,
                   help="ground-truth derivatives folder (e.g. <bids>/derivatives/cmb-truth)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--pattern", default="*detections.tsv", help="glob of detection files (default: %(default)s)")
    thr = p.add_mutually_exclusive_group()
    thr.add_argument("--threshold", type=float, default=None,
                     help="confidence threshold (>= kept); default: the one the detect stage recorded for these "
                          "scans (its *_desc-candidates_cmb.json), else 0.5")
    thr.add_argument("--choose-threshold", choices=["f1"], default=None,
                     help="use the F1-optimal threshold of this cohort's FROC (optimistic: tuned on the test set)")
    thr.add_argument("--target-sensitivity", type=float, default=None,
                     help="use the highest threshold reaching this sensitivity on this cohort")
    p.add_argument("--missing-as-empty", action="store_true",
                   help="score scans without a detection file as having no detections (default: error)")
    p.add_argument("--binary-masks", action="store_true",
                   help="truth images are binary masks: one CMB per 26-connected component (sibling tables ignored)")
    p.add_argument("--margin-mm", type=float, default=MARGIN_MM)
    p.add_argument("--min-point-radius-mm", type=float, default=MIN_POINT_RADIUS_MM)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the evaluation command; returns the exit code (2: bad input, one line on stderr)."""
    prog = "cmb evaluate"
    try:
        if args.derivatives is not None:
            scans, unmatched = derivative_scans(args.derivatives, args.truth, args.table_suffix)
        else:
            scans, unmatched = find_scans(args.detections, args.truth, args.pattern)
        if not scans:
            raise ValueError(f"no *_label-CMB_dseg.* ground truth under {args.truth}")
        missing = [s for s, _, d, _ in scans if d is None]
        if missing and not args.missing_as_empty:
            raise ValueError(f"no detection file for {len(missing)} scan(s): {', '.join(missing[:10])}"
                             " (use --missing-as-empty to score them as empty)")
        pairs = [(s, a, None if d is None else read_detections(d),
                  load_truth(t, split_components=args.binary_masks and is_nifti(t))) for s, a, d, t in scans]
        match = match_cohort(pairs, margin_mm=args.margin_mm, min_point_radius_mm=args.min_point_radius_mm)
        if args.choose_threshold or args.target_sensitivity is not None:
            threshold = choose_threshold(froc_curve(match), args.target_sensitivity)
        else:
            threshold = args.threshold
            if threshold is None:
                recorded = recorded_threshold(d for _, _, d, _ in scans)
                threshold = 0.5 if recorded is None else recorded
        paths = write_evaluation(args.out, match, threshold)
        agreement = _write_reviewer_agreement(args.truth, args.out)
    except (ValueError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    for f in unmatched:
        print(f"{prog}: warning: no ground truth for {f}", file=sys.stderr)
    cohort = json.loads(paths["cohort.json"].read_text())
    print(f"{cohort['n_subjects']} scans, {cohort['n_truth']} CMBs, threshold {threshold:.4g}: "
          f"sensitivity {cohort['sensitivity']}, precision {cohort['precision']}, F1 {cohort['f1']}, "
          f"FPavg {cohort['fp_avg']}; outputs in {args.out}")
    for r in agreement.itertuples():
        print(f"reviewers {r.reviewer_a} and {r.reviewer_b}: {r.n_scans} scans, {r.n_candidates} candidates, "
              f"agreement {r.agreement:.3f}, kappa {r.kappa:.3f} (reviewers.csv)")
    return 0


def _write_reviewer_agreement(truth_dir, out_dir) -> pd.DataFrame:
    """``reviewers.csv`` (:func:`cmb.verdicts.reviewer_agreement`) when scans have verdicts of two or more reviewers."""
    from cmb.verdicts import find_verdict_files, read_verdicts, reviewer_agreement

    scans = {k: [read_verdicts(p) for p in v] for k, v in find_verdict_files(truth_dir).items() if len(v) > 1}
    table = reviewer_agreement(scans)
    if len(table):
        write_text(Path(out_dir) / "reviewers.csv", table.to_csv(index=False))
    return table


def main(argv=None) -> int:
    """``python -m cmb.evaluation``: see :func:`build_parser`."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
