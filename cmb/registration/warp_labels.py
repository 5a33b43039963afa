"""Template-space labels (MARS, Desikan-Killiany) onto the native grid, and points between the two spaces.

The MNI MARS map (and optionally the Desikan-Killiany labels) is warped to the
native preprocessed grid with nearest-neighbour interpolation through the
transforms of :func:`cmb.registration.register.register_to_mni`; with a T1w and the
session's own parcellation (:mod:`cmb.parcellation`), the native MARS map comes
from that instead (:func:`warp_mars_to_native`). The point functions take and
return RAS.
"""

from __future__ import annotations

import logging
import os
import time

import nibabel as nib
import numpy as np

from cmb.atomic import write_text
from cmb.config import default
from cmb.mars_region import build_mars_labels, build_mars_map
from cmb.parcellation import (
    ATLAS_SOURCE,
    ParcellationError,
    parcellation_mars_labels,
    read_parcellation,
)
from cmb.registration.ants_adapter import XfmPaths, import_ants, map_points, to_ants
from cmb.registration.native_tissue import native_tissue_parcellation
from cmb.template import load_mni

__all__ = [
    "warp_labels_to_native",
    "warp_mars_to_native",
    "warp_dk_to_native",
    "write_dk_table",
    "mni_to_subject_points",
    "subject_to_mni_points",
]

_log = logging.getLogger(__name__)


def warp_labels_to_native(
    labels: nib.Nifti1Image,
    reference: nib.Nifti1Image,
    xfm: XfmPaths,
    interpolation: str = "nearestNeighbor",
    dtype=np.int16,
) -> nib.Nifti1Image:
    """Resample a template-space label image onto a subject grid.

    Parameters
    ----------
    labels : nibabel image
        Integer labels in template space (e.g. the MNI MARS map).
    reference : nibabel image
        The subject grid (only its shape and affine are used).
    xfm : XfmPaths
        Subject<->template transforms (``xfm.to_source`` is applied).
    interpolation : {"nearestNeighbor", "genericLabel"}
        Label-preserving interpolation. Nearest neighbour is the default: on a
        512 x 448 x 72 grid it took 6 s against 14 s for ``genericLabel`` (which
        smooths each label and takes the arg-max) and the two agreed on 98.3% of
        the brain voxels, differing only at region borders; at native SWI
        resolution (0.5 mm in-plane) the 1 mm atlas is oversampled anyway, so the
        smoother borders are not worth twice the time.

    Returns
    -------
    nibabel image of ``dtype`` on the reference grid.
    """
    ants = import_ants()
    ref = to_ants(reference, np.zeros(reference.shape[:3], np.float32))
    mov = to_ants(labels, np.asanyarray(labels.dataobj).astype(np.float32))
    # whichtoinvert explicitly: ANTsPy inverts a .mat followed by a warp by default
    out = ants.apply_transforms(
        ref,
        mov,
        xfm.to_source,
        interpolator=interpolation,
        singleprecision=True,
        whichtoinvert=[False, False],
    )
    img = nib.Nifti1Image(np.rint(out.numpy()).astype(dtype), reference.affine)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm")
    return img


def mni_to_subject_points(points_mni: np.ndarray, xfm: XfmPaths) -> np.ndarray:
    """Map (n, 3) MNI RAS mm points to subject scanner RAS mm.

    Point mapping runs opposite to image resampling: the transforms that resample a
    subject image into MNI (``xfm.to_target``) carry MNI points to the subject.
    """
    return map_points(points_mni, xfm.to_target)


def subject_to_mni_points(points_subject: np.ndarray, xfm: XfmPaths) -> np.ndarray:
    """Map (n, 3) subject scanner RAS mm points to MNI RAS mm (see :func:`mni_to_subject_points`)."""
    return map_points(points_subject, xfm.to_source)


# --------------------------------------------------------------------------- MARS and DK maps of a subject


def warp_mars_to_native(
    img: nib.Nifti1Image,
    mask_img: nib.Nifti1Image,
    xfm: XfmPaths,
    report: dict,
    *,
    swi_to_t1: np.ndarray | None = None,
    mars_mni: str | os.PathLike | None = None,
    interpolation: str = "nearestNeighbor",
    parcellation: str | os.PathLike | None = None,
    parcellation_root: str | os.PathLike | None = None,
    parcellation_refused: str | None = None,
    mars_options: dict | None = None,
    parcellation_min_dice: float = default("mars", "parcellation_min_dice"),
    native_tissue: dict | None = None,
) -> nib.Nifti1Image:
    """The native MARS map of a subject: from the atlas, or from the session's parcellation.

    The atlas route warps the packaged Desikan-Killiany labels and, with ``native_tissue``
    (``dark_focus_mm``, ``cortex_search_mm``: :mod:`cmb.registration.native_tissue`), takes
    the cortex/white-matter border from the subject's own tissue classes before MARS is
    rasterized on the native grid; without it, the MNI MARS map is warped as it is.
    ``report`` (the registration quality record) gets ``parcellation_source``,
    ``native_tissue``, and ``parcellation`` or ``parcellation_refused``. The other
    parameters are those of :func:`cmb.registration.register.register_subject`;
    ``swi_to_t1`` is the rigid RAS point matrix SWI -> T1w (None without a T1w).
    """
    if native_tissue is not None:
        mni = load_mni(1)
        dk, _ = warp_dk_to_native(img, xfm, interpolation=interpolation)
        labels, tissue, record = native_tissue_parcellation(
            img,
            np.asanyarray(mask_img.dataobj) > 0,
            xfm,
            mni,
            np.asanyarray(dk.dataobj),
            **native_tissue,
        )
        mars = build_mars_labels(
            labels,
            img.affine,
            names=mni.dk_names,
            brain=np.asanyarray(mask_img.dataobj) > 0,
            tissue=tissue,
            **(mars_options or {}),
        )
        native = nib.Nifti1Image(mars.labels, img.affine)
        native.header.set_data_dtype(np.int16)
        native.header.set_xyzt_units("mm")
        report["native_tissue"] = record
    else:
        if mars_mni is not None:
            mars_img = nib.load(mars_mni)
        else:
            mars = build_mars_map(load_mni(1))
            mars_img = nib.Nifti1Image(mars.labels, mars.affine)
        native = warp_labels_to_native(mars_img, img, xfm, interpolation=interpolation)
    report["parcellation_source"] = ATLAS_SOURCE
    if parcellation_refused:
        _log.warning("%s", parcellation_refused)
        report["parcellation_refused"] = parcellation_refused
    elif parcellation is not None:
        native = _parcellation_route(
            native,
            img,
            mask_img,
            swi_to_t1,
            parcellation,
            parcellation_root,
            mars_options or {},
            parcellation_min_dice,
            report,
        )
    return native


def _parcellation_route(
    atlas_native: nib.Nifti1Image,
    img: nib.Nifti1Image,
    mask_img: nib.Nifti1Image,
    swi_to_t1: np.ndarray | None,
    parcellation,
    root,
    mars_options: dict,
    min_dice: float,
    report: dict,
) -> nib.Nifti1Image:
    """The native MARS map from the session's parcellation, or the atlas map with the reason it was refused."""
    t0 = time.perf_counter()
    if swi_to_t1 is None:
        reason = (
            f"{parcellation}: the session has no T1w, so the T1w-space parcellation cannot be mapped onto "
            "the SWI; the atlas route is used (add the T1w, or clear mars.parcellation_dir)"
        )
    else:
        try:
            parc = read_parcellation(parcellation, root)
            labels, info = parcellation_mars_labels(
                parc,
                img,
                np.asanyarray(mask_img.dataobj) > 0,
                swi_to_t1,
                np.asanyarray(atlas_native.dataobj).astype(np.int16),
                min_brain_dice=min_dice,
                **mars_options,
            )
        except ParcellationError as err:
            reason = f"{err}; the atlas route is used"
        else:
            out = nib.Nifti1Image(labels, img.affine)
            out.header.set_data_dtype(np.int16)
            out.header.set_xyzt_units("mm")
            report["parcellation_source"] = parc.source
            report["parcellation"] = {
                "file": str(parc.path),
                **info,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            _log.info(
                "MARS map from %s: brain Dice %.3f, category agreement with the atlas route %.3f",
                parc.path,
                info["brain_dice"],
                info["atlas_category_agreement"],
            )
            return out
    _log.warning("%s", reason)
    report["parcellation_refused"] = reason
    return atlas_native


def warp_dk_to_native(
    img: nib.Nifti1Image, xfm: XfmPaths, interpolation: str = "nearestNeighbor"
) -> tuple[nib.Nifti1Image, dict[int, str]]:
    """The template's Desikan-Killiany labels on the subject grid, and their names (for :func:`write_dk_table`)."""
    mni = load_mni(1)
    dk = warp_labels_to_native(
        nib.Nifti1Image(mni.dk.astype(np.int16), mni.affine), img, xfm, interpolation=interpolation
    )
    return dk, mni.dk_names


def write_dk_table(names: dict[int, str], path) -> None:
    """The label table (``index``, ``name``) of a Desikan-Killiany dseg."""
    lines = ["index\tname"] + [f"{k}\t{v}" for k, v in sorted(names.items())]
    write_text(path, "\n".join(lines) + "\n")
