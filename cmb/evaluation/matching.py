"""Detections of a scan and their matching to the ground truth.

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

Detections are a :class:`pandas.DataFrame` (:func:`read_detections` reads one from a
file); truth is any form :func:`cmb.evaluation.truth.as_truth` accepts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from cmb.evaluation.truth import (
    XYZ_COLUMNS,
    Truth,
    as_truth,
    check_columns,
    finite_floats,
    table_sep,
)

__all__ = [
    "MARGIN_MM",
    "MIN_POINT_RADIUS_MM",
    "SubjectMatch",
    "CohortMatch",
    "read_detections",
    "detection_hits",
    "match_detections",
    "kept_detections",
    "match_subject",
    "match_cohort",
]

#: Dilation of ground-truth masks, and margin added to point radii (mm).
MARGIN_MM = 2.0
#: Smallest matching radius around a point annotation (mm).
MIN_POINT_RADIUS_MM = 3.0

_EPS_MM = 1e-6  # boundary tolerance: a point exactly at the matching distance matches


# ---------------------------------------------------------------------- detections
def _as_detections(detections) -> pd.DataFrame:
    """Validated copy with ``detection_id`` first; no rows when ``detections`` is None."""
    if detections is None:
        detections = pd.DataFrame(columns=[*XYZ_COLUMNS, "confidence"])
    det = pd.DataFrame(detections).reset_index(drop=True)
    check_columns(det, [*XYZ_COLUMNS, "confidence"], "detections")
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
    det[XYZ_COLUMNS] = finite_floats(det[XYZ_COLUMNS].to_numpy(), "detection coordinates")
    det["confidence"] = finite_floats(det["confidence"].to_numpy(), "detection confidences")
    return det


def read_detections(path) -> pd.DataFrame:
    """Read a detections table (TSV, or CSV by extension) with ``x_mm, y_mm, z_mm, confidence``.

    An empty (0-byte) file is an error: it is the placeholder of a failed stage
    (:mod:`cmb.failures`), not "no detections" (that is a header-only table).
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError(
            f"{path}: empty file (placeholder of a failed stage?), not a detections table"
        )
    table = pd.read_csv(path, sep=table_sep(path))
    if "rejected" in table.columns:  # the anatomical filter's rejections are not detections
        table = table[~table["rejected"].astype(str).str.lower().isin(["true", "1"])]
    return _as_detections(table)


# ------------------------------------------------------------------------ matching
def detection_hits(points: np.ndarray, truth: Truth, margin_mm: float, min_point_radius_mm: float):
    """(n, m) boolean "detection i hits CMB j" and (n, m) centre distances (mm).

    ``points``: (n, 3) detection centroids (scanner RAS, mm); the hit rule of the module
    docstring, before the one-to-one assignment of :func:`match_detections`.
    """
    tab = truth.table
    centres = tab[XYZ_COLUMNS].to_numpy(dtype=float)
    dist = np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=-1)
    reach = np.maximum(min_point_radius_mm, tab["radius_mm"].to_numpy(dtype=float) + margin_mm)
    hits = dist <= reach[None, :] + _EPS_MM
    has_mask = tab["has_mask"].to_numpy(dtype=bool)
    if has_mask.any() and len(points):
        ijk = np.rint(np.c_[points, np.ones(len(points))] @ np.linalg.inv(truth.affine).T)[
            :, :3
        ].astype(np.int64)
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


def match_detections(
    detections,
    truth,
    *,
    margin_mm: float = MARGIN_MM,
    min_point_radius_mm: float = MIN_POINT_RADIUS_MM,
) -> pd.DataFrame:
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
    points = det[XYZ_COLUMNS].to_numpy(dtype=float)
    hits, dist = detection_hits(points, truth, margin_mm, min_point_radius_mm)
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


def kept_detections(det: pd.DataFrame, threshold) -> pd.DataFrame:
    """The rows of ``det`` with ``confidence >= threshold``; all of them when ``threshold`` is None."""
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
    det = kept_detections(match_detections(detections, truth, **kwargs), threshold)
    tp = det[det["truth_id"].notna()]
    pairs = (
        pd.DataFrame(
            {
                "truth_id": tp["truth_id"].astype(np.int64).to_numpy(),
                "detection_id": tp["detection_id"].to_numpy(),
                "distance_mm": tp["distance_mm"].to_numpy(dtype=float),
                "confidence": tp["confidence"].to_numpy(dtype=float),
            }
        )
        .sort_values("truth_id", kind="stable")
        .reset_index(drop=True)
    )
    tab = truth.table.copy()
    lookup = dict(zip(pairs["truth_id"], pairs["detection_id"]))
    tab["detection_id"] = pd.Series(
        [lookup.get(t, pd.NA) for t in tab["truth_id"]], index=tab.index, dtype=object
    )
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


def match_cohort(
    pairs: Iterable,
    *,
    margin_mm: float = MARGIN_MM,
    min_point_radius_mm: float = MIN_POINT_RADIUS_MM,
) -> CohortMatch:
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
        det = match_detections(
            detections, truth, margin_mm=margin_mm, min_point_radius_mm=min_point_radius_mm
        )
        subjects.append((subject, acquisition, truth.n))
        dets.append(det.assign(subject=subject, acquisition=acquisition))
        truths.append(truth.table.assign(subject=subject, acquisition=acquisition))
    subj = pd.DataFrame(subjects, columns=["subject", "acquisition", "n_truth"]).astype(
        {"n_truth": np.int64}
    )
    if subj["subject"].duplicated().any():
        dup = subj.loc[subj["subject"].duplicated(), "subject"].tolist()
        raise ValueError(f"duplicate subject ids: {', '.join(dup)}")

    def stack(frames, empty_cols):
        frames = [f for f in frames if len(f)]
        out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=empty_cols)
        front = ["subject", "acquisition"]
        return out[front + [c for c in out.columns if c not in front]]

    det = stack(
        dets,
        [
            "subject",
            "acquisition",
            "detection_id",
            *XYZ_COLUMNS,
            "confidence",
            "truth_id",
            "distance_mm",
        ],
    )
    det["confidence"] = det["confidence"].astype(float)
    det["truth_id"] = det["truth_id"].astype("Int64")
    tru = stack(
        truths, ["subject", "acquisition", "truth_id", *XYZ_COLUMNS, "radius_mm", "has_mask"]
    )
    return CohortMatch(subj, det, tru, margin_mm, min_point_radius_mm)
