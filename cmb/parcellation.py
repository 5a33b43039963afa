"""A cohort's own parcellation (FreeSurfer, FastSurfer, SynthSeg, fMRIPrep) as the source of the MARS map.

Many cohorts have already parcellated their T1w scans. With ``mars.parcellation_dir``
set, :func:`find_parcellation` looks there for the session's parcellation, in the
layouts these tools write:

- a BIDS-derivatives folder (fMRIPrep, or a SynthSeg/FastSurfer run saved the BIDS
  way): ``sub-<label>[/ses-<label>]/anat/sub-<label>[_ses-<label>]_desc-<desc>_dseg.nii.gz``
  with its optional ``.tsv`` lookup (``index``, ``name``), in the T1w's space (no
  ``space-`` entity, or ``space-T1w``/``space-orig``). fMRIPrep writes
  ``desc-aparcaseg`` and ``desc-aseg``; its ``_dseg`` without ``desc`` is the 3-class
  tissue map, which carries no FreeSurfer numbers and is never taken;
- a FreeSurfer ``SUBJECTS_DIR`` (or FastSurfer's output folder):
  ``sub-<label>[_ses-<label>]/mri/aparc+aseg.mgz``, else
  ``aparc.DKTatlas+aseg.deep.mgz`` (FastSurfer), else ``aseg.mgz``.

A session's own folder is looked in first, then the subject's (anatomical derivatives are
often per subject). :func:`parcellation_mars_labels` maps the labels to MARS regions on
the parcellation's grid (:func:`cmb.mars_region.build_mars_labels`, the same lookup table
as the atlas route), then onto the SWI grid through the SWI->T1w rigid transform that
registration estimates; parcellations without lobes (``aseg``, SynthSeg without
``--parc``) take the lobe of their cortex from the atlas route's map. The result is
checked against the SWI brain mask: a parcellation of another scan (or another space)
overlaps it poorly and is refused, and registration then keeps the atlas route.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from cmb.config import default
from cmb.mars_region import CSF_LABEL, OUTSIDE_LABEL, UNKNOWN_LABEL, build_mars_labels, decode_label

__all__ = [
    "ATLAS_SOURCE",
    "PREFERRED_DESCS",
    "FREESURFER_FILES",
    "Parcellation",
    "ParcellationError",
    "find_parcellation",
    "read_parcellation",
    "parcellation_mars_labels",
]

ATLAS_SOURCE = "atlas:MNI152NLin2009cAsym-DK"
# desc entities of FreeSurfer-numbered dseg files, most detailed first
PREFERRED_DESCS = ("aparcaseg", "aparcasegDKT", "DKTatlasaseg", "synthsegparc", "aseg", "synthseg")
FREESURFER_FILES = (
    "aparc+aseg.mgz",
    "aparc.DKTatlas+aseg.deep.mgz",
    "aparc.DKTatlas+aseg.mgz",
    "aseg.mgz",
)
_NATIVE_SPACES = (None, "T1w", "orig")


class ParcellationError(ValueError):
    """A parcellation that cannot be used: the message names the file, the reason and the setting."""


@dataclass
class Parcellation:
    path: Path
    labels: np.ndarray  # FreeSurfer label numbers, int32
    affine: np.ndarray  # voxel -> world (the T1w's scanner RAS)
    names: dict[int, str] | None = None
    source: str = ""  # for the tables: "parcellation:<path relative to parcellation_dir>"


def _entities(name: str) -> dict[str, str]:
    stem = re.sub(r"\.nii(\.gz)?$", "", name)
    return dict(part.split("-", 1) for part in stem.split("_")[:-1] if "-" in part)


def find_parcellation(
    root: str | Path, subject: str, session: str | None = None, desc: str = ""
) -> Path | None:
    """The session's parcellation under ``root`` (module docstring), or None when it has none.

    Raises :class:`ParcellationError` when several candidates remain and ``desc``
    (``mars.parcellation_desc``) does not choose between them.

    >>> import tempfile; root = Path(tempfile.mkdtemp())
    >>> anat = root / "sub-01" / "anat"; anat.mkdir(parents=True)
    >>> for n in ("sub-01_desc-aseg_dseg.nii.gz", "sub-01_desc-aparcaseg_dseg.nii.gz", "sub-01_dseg.nii.gz",
    ...           "sub-01_space-MNI152NLin2009cAsym_desc-aparcaseg_dseg.nii.gz"):
    ...     _ = (anat / n).write_bytes(b"")
    >>> find_parcellation(root, "01", "a").name  # the subject level serves its sessions
    'sub-01_desc-aparcaseg_dseg.nii.gz'
    >>> find_parcellation(root, "01", desc="aseg").name
    'sub-01_desc-aseg_dseg.nii.gz'
    >>> find_parcellation(root, "02") is None
    True
    """
    root = Path(root)
    sub = subject if subject.startswith("sub-") else f"sub-{subject}"
    ses = None if not session else (session if session.startswith("ses-") else f"ses-{session}")
    levels = (
        [(root / sub / ses / "anat", f"{sub}_{ses}"), (root / f"{sub}_{ses}", None)] if ses else []
    )
    levels += [(root / sub / "anat", sub), (root / sub, None)]
    for folder, prefix in levels:
        if prefix is not None:
            found = _bids_dseg(folder, prefix, desc)
        else:
            found = next(
                (folder / "mri" / f for f in FREESURFER_FILES if (folder / "mri" / f).is_file()),
                None,
            )
        if found is not None:
            return found
    return None


def _bids_dseg(folder: Path, prefix: str, desc: str) -> Path | None:
    if not folder.is_dir():
        return None
    candidates = {}
    for p in sorted(folder.glob(f"{prefix}_*dseg.nii*")):
        ent = _entities(p.name)
        if ent.get("space") not in _NATIVE_SPACES or "desc" not in ent:
            continue
        if p.name.startswith(prefix + "_ses-") and "_ses-" not in prefix:
            continue  # a session's file found from the subject level
        candidates.setdefault(ent["desc"], []).append(p)
    if desc:
        chosen = candidates.get(desc, [])
    else:
        chosen = next((candidates[d] for d in PREFERRED_DESCS if d in candidates), [])
    if len(chosen) > 1:
        raise ParcellationError(
            f"{folder}: several parcellations ({', '.join(p.name for p in chosen)}); set mars.parcellation_desc "
            "and keep one per space, or point mars.parcellation_dir elsewhere"
        )
    return chosen[0] if chosen else None


def read_parcellation(path: str | Path, root: str | Path | None = None) -> Parcellation:
    """Labels, grid and label names of a parcellation file (``.mgz`` or ``_dseg.nii.gz`` + ``.tsv``)."""
    path = Path(path)
    try:
        img = nib.load(path)
        labels = np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 - any reader error is the file's fault
        raise ParcellationError(
            f"{path}: not a readable label image ({err}); fix the file or clear "
            "mars.parcellation_dir to use the atlas route"
        ) from err
    labels = np.squeeze(labels)
    if labels.ndim != 3:
        raise ParcellationError(
            f"{path}: a label image must be 3-D, this one has shape {labels.shape}"
        )
    if not np.allclose(labels, np.rint(labels)):
        raise ParcellationError(f"{path}: non-integer values; a parcellation holds label numbers")
    names = None
    tsv = Path(re.sub(r"\.nii(\.gz)?$", ".tsv", str(path)))
    if tsv != path and tsv.is_file():
        table = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
        if not {"index", "name"} <= set(table.columns):
            raise ParcellationError(
                f"{tsv}: a dseg lookup needs the columns index and name (BIDS), "
                f"it has {', '.join(table.columns)}"
            )
        names = {int(i): n for i, n in zip(table["index"], table["name"])}
    rel = path.relative_to(root) if root is not None and path.is_relative_to(root) else path.name
    return Parcellation(
        path=path,
        labels=np.rint(labels).astype(np.int32),
        affine=img.affine.astype(float),
        names=names,
        source=f"parcellation:{rel}",
    )


def _crop(
    labels: np.ndarray, affine: np.ndarray, margin_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """The bounding box of the labelled voxels grown by ``margin_mm`` (a conformed 256^3 volume is mostly 0)."""
    nz = np.nonzero(labels)
    if not len(nz[0]):
        raise ParcellationError("no labelled voxel")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    lo = [max(int(a.min()) - int(np.ceil(margin_mm / z)), 0) for a, z in zip(nz, zooms)]
    hi = [
        min(int(a.max()) + int(np.ceil(margin_mm / z)) + 1, n)
        for a, z, n in zip(nz, zooms, labels.shape)
    ]
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ np.array(lo, float) + affine[:3, 3]
    return labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], shifted


def _resample_labels(
    data: np.ndarray,
    data_affine: np.ndarray,
    target_shape,
    target_affine: np.ndarray,
    target_to_data_world: np.ndarray,
) -> np.ndarray:
    """Nearest-neighbour resampling: target voxel -> target world -> data world -> data voxel."""
    vox = np.linalg.inv(data_affine) @ target_to_data_world @ target_affine
    return ndi.affine_transform(
        data,
        vox[:3, :3],
        vox[:3, 3],
        output_shape=tuple(target_shape),
        order=0,
        mode="constant",
        cval=0,
    )


def _categories(labels: np.ndarray) -> np.ndarray:
    """0 for non-parenchyma, else 1 lobar, 2 deep, 3 infratentorial."""
    code = {"lobar": 1, "deep": 2, "infratentorial": 3}
    out = np.zeros(labels.shape, np.int8)
    for value in np.unique(labels).tolist():
        if value in (OUTSIDE_LABEL, CSF_LABEL, UNKNOWN_LABEL):
            continue
        out[labels == value] = code[decode_label(int(value))[0]]
    return out


def parcellation_mars_labels(
    parcellation: Parcellation,
    reference: nib.Nifti1Image,
    brain_mask: np.ndarray,
    swi_to_t1w: np.ndarray,
    atlas_labels: np.ndarray,
    *,
    juxtacortical_mm: float = default("mars", "juxtacortical_mm"),
    insula_juxtacortical_mm: float = default("mars", "insula_juxtacortical_mm"),
    capsule_mm: float = default("mars", "capsule_mm"),
    label_search_mm: float = default("mars", "label_search_mm"),
    min_brain_dice: float = 0.8,
) -> tuple[np.ndarray, dict]:
    """The MARS map on the SWI grid from a T1w-space parcellation.

    Parameters
    ----------
    parcellation : Parcellation
        FreeSurfer-numbered labels on the T1w's world coordinates.
    reference : nibabel image
        The SWI grid (preprocessed magnitude).
    brain_mask : ndarray of bool
        The SWI brain mask on that grid.
    swi_to_t1w : (4, 4) ndarray
        RAS point matrix from SWI world to T1w world (registration's rigid step).
    atlas_labels : ndarray
        The atlas route's MARS map on the SWI grid: the lobes of cortex the
        parcellation labels without one.
    min_brain_dice : float
        Least Dice overlap between the parcellation's brain (mapped onto the SWI grid)
        and the SWI brain mask (``mars.parcellation_min_dice``).

    Returns
    -------
    labels : ndarray of int16 on the SWI grid
    info : dict
        ``brain_dice`` and ``atlas_category_agreement`` (share of the voxels that both
        routes call parenchyma whose MARS category agrees).
    """
    seg, affine = _crop(parcellation.labels, parcellation.affine, margin_mm=8.0)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    # label 0 inside the brain is sulcal CSF (FreeSurfer labels the ventricles, not the sulci)
    ball = ndi.iterate_structure(
        ndi.generate_binary_structure(3, 1), max(1, int(round(3.0 / zooms.min())))
    )
    brain = ndi.binary_fill_holes(ndi.binary_closing(seg > 0, structure=ball)) | (seg > 0)
    lobes = _resample_labels(
        atlas_labels.astype(np.int16),
        reference.affine,
        seg.shape,
        affine,
        np.linalg.inv(swi_to_t1w),
    )
    try:
        mars = build_mars_labels(
            seg,
            affine,
            names=parcellation.names,
            brain=brain,
            lobes=lobes,
            juxtacortical_mm=juxtacortical_mm,
            insula_juxtacortical_mm=insula_juxtacortical_mm,
            capsule_mm=capsule_mm,
            label_search_mm=label_search_mm,
        )
    except (ValueError, KeyError) as err:
        raise ParcellationError(f"{parcellation.path}: {err}") from err
    native = _resample_labels(
        mars.labels, affine, reference.shape[:3], reference.affine, swi_to_t1w
    )
    native = native.astype(np.int16)
    mask = np.asarray(brain_mask, bool)
    mapped = native != OUTSIDE_LABEL
    dice = float(2 * (mapped & mask).sum() / max(mapped.sum() + mask.sum(), 1))
    if dice < min_brain_dice:
        raise ParcellationError(
            f"{parcellation.path}: its brain overlaps the SWI brain mask with Dice {dice:.2f} < {min_brain_dice} "
            "after the SWI->T1w transform: a parcellation of another scan or space? (mars.parcellation_min_dice)"
        )
    ours, theirs = _categories(native), _categories(atlas_labels)
    both = (ours > 0) & (theirs > 0)
    agreement = float((ours[both] == theirs[both]).mean()) if both.any() else float("nan")
    return native, {"brain_dice": round(dice, 4), "atlas_category_agreement": round(agreement, 4)}
