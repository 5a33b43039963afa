"""Ground truth of one scan: the :class:`Truth` class and the readers of every truth form.

Truth is a label image (nibabel image, or an array plus affine, optionally with a
table of centres and attributes: :func:`truth_from_labels`), a point table
(:func:`truth_from_points`), reviewers' verdicts (:func:`truth_from_verdicts`) or a
file holding any of these (:func:`load_truth`); :func:`as_truth` accepts them all.
A CMB with a mask is matched against its dilated mask, one without by the point
rule (:mod:`cmb.evaluation.matching`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from cmb.annotations import is_nifti
from cmb.verdicts import (
    CMB_VERDICTS,
    NON_CMB_VERDICTS,
    consensus,
    read_verdicts,
    scan_verdict_files,
)

__all__ = [
    "XYZ_COLUMNS",
    "Truth",
    "truth_from_points",
    "truth_from_labels",
    "load_truth",
    "truth_from_verdicts",
    "as_truth",
    "check_columns",
    "finite_floats",
    "table_sep",
]

#: Centre / centroid columns (scanner RAS, mm) of truth and detection tables.
XYZ_COLUMNS = ["x_mm", "y_mm", "z_mm"]
_ID_COLUMNS = ("truth_id", "index", "id")  # accepted names of a truth table's id column, in order


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
    boxes: dict = field(
        default_factory=dict, repr=False
    )  # truth_id -> bounding box slices in labels
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


def check_columns(table: pd.DataFrame, columns, what: str) -> None:
    """A ValueError naming the ``columns`` that ``table`` lacks (``what``: the table, for the message)."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"{what} lacks column(s) {', '.join(missing)} (has: {', '.join(map(str, table.columns))})"
        )


def finite_floats(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` as floats; a ValueError when one is not finite (``what``: the values, for the message)."""
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
    check_columns(table, XYZ_COLUMNS, "truth point table")
    out = table.drop(columns=[c for c in (*_ID_COLUMNS, "has_mask") if c in table.columns])
    out.insert(0, "truth_id", _truth_ids(table))
    if out["truth_id"].duplicated().any():
        raise ValueError("truth ids must be unique")
    out[XYZ_COLUMNS] = finite_floats(out[XYZ_COLUMNS].to_numpy(), "truth coordinates")
    radius = (
        pd.to_numeric(out["radius_mm"], errors="coerce")
        if "radius_mm" in out
        else pd.Series(0.0, out.index)
    )
    out["radius_mm"] = radius.fillna(0.0).astype(float)
    out["has_mask"] = False
    return Truth(out.sort_values("truth_id", kind="stable").reset_index(drop=True))


def truth_from_labels(
    labels, affine=None, table: pd.DataFrame | None = None, *, split_components: bool = False
) -> Truth:
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
            raise ValueError(
                "split_components relabels the mask: a table keyed by label cannot be used with it"
            )
        data = ndi.label(data > 0, structure=np.ones((3, 3, 3), dtype=bool))[0].astype(np.int32)
    boxes = {i + 1: box for i, box in enumerate(ndi.find_objects(data)) if box is not None}
    rows = []
    for tid, box in boxes.items():
        vox = np.argwhere(data[box] == tid).mean(axis=0) + [s.start for s in box]
        rows.append((tid, *(affine[:3, :3] @ vox + affine[:3, 3])))
    centroids = pd.DataFrame(rows, columns=["truth_id", *XYZ_COLUMNS])
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


def table_sep(path: Path) -> str:
    """Column separator of a truth or detections table: ``,`` for ``*.csv``, else a tab."""
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
        return truth_from_verdicts([read_verdicts(p) for p in scan_verdict_files(path)])
    return truth_from_points(pd.read_csv(path, sep=table_sep(path)))


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
    cons = consensus(list(tables))
    cmb = cons[cons["verdict"].isin(CMB_VERDICTS)]
    truth = truth_from_points(
        cmb[[*XYZ_COLUMNS, "verdict", "reviewer"]].assign(
            radius_mm=pd.to_numeric(cmb["radius_mm"], errors="coerce").fillna(0.0)
        )
    )
    non = cons[cons["verdict"].isin(NON_CMB_VERDICTS)]
    non = (
        non[XYZ_COLUMNS]
        .astype(float)
        .assign(radius_mm=pd.to_numeric(non["radius_mm"], errors="coerce").fillna(0.0))
    )
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
