"""Brain mask of an SWI / T2*-GRE magnitude image: registered template, refined by intensity.

SWI/T2* magnitude contrast: CSF bright, grey > white matter, iron-rich deep
nuclei and veins dark, skull dark, scalp moderate to bright. Intensity alone
cannot separate the brain (dark nuclei inside, bright scalp outside), and a
template alone misses individual anatomy by a few millimetres. So:

1. :func:`head_mask`: the head against the background (Otsu threshold);
2. :func:`rough_brain_mask`: bright tissue inside the head, eroded to cut it
   from the scalp across the dark skull, largest component, dilated back;
3. :func:`template_brain_prior`: the packaged MNI brain mask, affinely
   registered (mutual information) to the roughly skull-stripped image;
4. :func:`refine_brain_mask`: the registered mask, eroded to a trusted core, then
   grown by up to ``grow_mm`` into voxels that are not dark (skull, air), kept
   connected to the core, opened to cut thin bridges, holes filled.

The work is done on a ~2 mm block-averaged copy of the image (morphology on
0.5 mm voxels is slow) and the result is interpolated back to the input grid.
The mask includes the CSF around the brain, as usual for a brain mask.
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from cmb.registration.ants_adapter import ants_tempdir, import_ants, to_ants
from cmb.registration.grids import downsample_blocks, upsample_blocks, voxel_sizes
from cmb.registration.register import mni_target

__all__ = [
    "head_mask",
    "rough_brain_mask",
    "template_brain_prior",
    "refine_brain_mask",
    "compute_brain_mask",
]

_log = logging.getLogger(__name__)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes in 3-D, then slice by slice along the last (axial in RAS) axis.

    A hole is a background component that does not touch the volume's border (3-D)
    or the slice's border (2-D, all slices labelled in one pass). The slice-wise
    pass closes cavities that are open only through the top or bottom of a slab.
    """
    out = mask.astype(bool).copy()
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = ndi.generate_binary_structure(2, 1)
    for structure in (None, in_plane):
        lab, n = ndi.label(~out, structure=structure)
        if n == 0:
            continue
        edge = np.zeros(n + 1, bool)
        faces = [lab[0], lab[-1], lab[:, 0], lab[:, -1]]
        if structure is None:
            faces += [lab[:, :, 0], lab[:, :, -1]]
        for face in faces:
            edge[np.unique(face)] = True
        edge[0] = True
        out |= ~edge[lab]
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (1.0 for two empty masks).

    >>> _dice(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool))
    0.6666666666666666
    """
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def _erode(mask: np.ndarray, mm: float, zooms) -> np.ndarray:
    if mm <= 0:
        return mask
    return ndi.distance_transform_edt(mask, sampling=zooms) > mm


def _dilate(mask: np.ndarray, mm: float, zooms) -> np.ndarray:
    if mm <= 0:
        return mask
    return ndi.distance_transform_edt(~mask, sampling=zooms) <= mm


def head_mask(data: np.ndarray, zooms=(1.0, 1.0, 1.0)) -> np.ndarray:
    """The head (everything brighter than the background noise), holes filled.

    >>> d = np.zeros((30, 30, 30)); d[5:25, 5:25, 5:25] = 1.0; d[12:18, 12:18, 12:18] = 0.0
    >>> m = head_mask(d + 0.01 * np.random.default_rng(0).random(d.shape))
    >>> bool(m[15, 15, 15]), bool(m[2, 2, 2]), abs(int(m.sum()) - 20 ** 3) < 0.25 * 20 ** 3
    (True, False, True)
    """
    smooth = ndi.gaussian_filter(np.asarray(data, np.float32), 1.0 / np.asarray(zooms, float))
    values = smooth[smooth > 0]
    if values.size == 0:
        return np.zeros(data.shape, bool)
    t = threshold_otsu(values[:: max(1, values.size // 200_000)])
    mask = _largest_component(smooth > 0.5 * t)
    return _fill_holes(mask)


def rough_brain_mask(
    data: np.ndarray, head: np.ndarray, zooms=(1.0, 1.0, 1.0), erode_mm: float = 5.0
) -> np.ndarray:
    """Bright tissue inside the head, separated from the scalp by erosion across the skull.

    The erosion cuts the thin bridges left where the dark skull is partial-volumed;
    the brain is then the largest remaining component, dilated back within the tissue.
    """
    values = data[head]
    if values.size == 0:
        return head.copy()
    t = threshold_otsu(values[:: max(1, values.size // 200_000)])
    tissue = head & (ndi.gaussian_filter(data, 0.7 / np.asarray(zooms, float)) > 0.6 * t)
    core = _largest_component(_erode(tissue, erode_mm, zooms))
    if not core.any():
        return _fill_holes(tissue)
    return _fill_holes(_dilate(core, erode_mm + 1.0, zooms) & tissue | core)


def template_brain_prior(
    work: nib.Nifti1Image, rough: np.ndarray, step_mm: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """The template brain mask, affinely registered onto ``work``'s grid.

    Parameters
    ----------
    work : nibabel image
        Bias-corrected magnitude (any grid).
    rough : bool ndarray
        Rough brain mask on that grid (:func:`rough_brain_mask`); the registration
        sees the image inside it, dilated by 3 mm.
    step_mm : int
        Registration resolution; levels at 2*step and step mm.

    Returns
    -------
    prior : float32 ndarray
        Template brain mask resampled (linear) onto ``work``'s grid, in [0, 1].
    matrix : (4, 4) ndarray
        RAS point matrix, subject world -> MNI world (for the record).
    """
    ants = import_ants()
    zooms = voxel_sizes(work.affine)
    data = np.asanyarray(work.dataobj).astype(np.float32) * _dilate(rough, 3.0, zooms)
    small, aff, _ = downsample_blocks(data, work.affine, step_mm)
    fixed = to_ants(nib.Nifti1Image(small, aff))
    tpl, tpl_mask = mni_target(step_mm, "swi")
    with ants_tempdir() as tmp:
        reg = ants.registration(
            fixed,
            tpl,
            "Affine",
            outprefix=str(tmp / "mask_"),
            aff_metric="mattes",
            aff_iterations=(500, 250),
            aff_shrink_factors=(2, 1),
            aff_smoothing_sigmas=(1, 0),
            aff_random_sampling_rate=0.3,
        )
        ref = to_ants(work, np.zeros(work.shape[:3], np.float32))
        prior = ants.apply_transforms(
            ref, tpl_mask, reg["fwdtransforms"], interpolator="linear", singleprecision=True
        )
        tx = ants.read_transform(reg["fwdtransforms"][0])
        p = np.asarray(tx.parameters, float)
        c = np.asarray(tx.fixed_parameters, float)
    m = np.eye(4)
    m[:3, :3] = p[:9].reshape(3, 3)
    m[:3, 3] = p[9:12] + c - m[:3, :3] @ c
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    # ANTs maps fixed (subject) points to moving (template) points
    return np.clip(prior.numpy(), 0, 1).astype(np.float32), lps @ m @ lps


def refine_brain_mask(
    data: np.ndarray,
    prior: np.ndarray,
    zooms=(1.0, 1.0, 1.0),
    *,
    core_mm: float = 4.0,
    grow_mm: float = 6.0,
    dark_fraction: float = 0.35,
    open_mm: float = 1.5,
) -> np.ndarray:
    """Adapt a registered template mask to the subject's intensities.

    Parameters
    ----------
    data : ndarray
        Bias-corrected magnitude.
    prior : ndarray
        Registered template brain mask (probability or binary).
    zooms : sequence of 3 float
        Voxel size, mm.
    core_mm : float
        The prior eroded by this much is kept whatever its intensity (dark
        nuclei, veins, lesions).
    grow_mm : float
        Farthest the mask may extend beyond the prior.
    dark_fraction : float
        Between the core and the limit, voxels darker than this fraction of the
        core's median (skull, air) are excluded.
    open_mm : float
        Morphological opening radius that cuts thin bridges to the scalp.

    Returns
    -------
    bool ndarray
    """
    zooms = np.asarray(zooms, float)
    p = prior > 0.5
    core = _erode(p, core_mm, zooms)
    if not core.any():
        return p
    level = float(np.median(data[core]))
    bright = ndi.gaussian_filter(np.asarray(data, np.float32), 0.5 / zooms) > dark_fraction * level
    cand = core | (_dilate(p, grow_mm, zooms) & bright)
    opened = _dilate(_erode(cand, open_mm, zooms), open_mm, zooms) & cand
    lab, _ = ndi.label(opened | core)
    keep = np.unique(lab[core])
    mask = np.isin(lab, keep[keep > 0])
    return _fill_holes(mask)


def compute_brain_mask(
    img: nib.Nifti1Image,
    *,
    work_mm: float,
    grow_mm: float,
    register_step_mm: int = 4,
    core_mm: float = 4.0,
    dark_fraction: float = 0.35,
    min_agreement: float = 0.7,
) -> tuple[np.ndarray, dict]:
    """Brain mask of a bias-corrected SWI/T2* magnitude image (RAS, any voxel size).

    Parameters
    ----------
    img : nibabel image
    work_mm : float
        Voxel size of the morphology (block average of ``img``).
    register_step_mm : int
        Resolution of the template registration (:func:`template_brain_prior`).
    core_mm, grow_mm, dark_fraction : float
        See :func:`refine_brain_mask`.
    min_agreement : float
        If the registered template mask and the intensity-based rough mask have a
        Dice below this, the registration is taken as failed and the rough mask
        is refined instead (recorded in ``info``).

    Returns
    -------
    mask : bool ndarray on ``img``'s grid
    info : dict
        Intermediate volumes (mL) and the template affine, for the record.
    """
    data = np.asanyarray(img.dataobj).astype(np.float32)
    small, aff, factors = downsample_blocks(data, img.affine, work_mm)
    zooms = voxel_sizes(aff)
    head = head_mask(small, zooms)
    rough = rough_brain_mask(small, head, zooms)
    work = nib.Nifti1Image(small, aff)
    prior, matrix = template_brain_prior(work, rough, register_step_mm)
    agreement = _dice(prior > 0.5, rough)
    if agreement < min_agreement:
        # a failed template registration must not cut the brain: fall back to the rough mask
        _log.warning(
            "registered template mask disagrees with the intensity mask (Dice %.2f < %.2f): "
            "using the intensity mask",
            agreement,
            min_agreement,
        )
        prior = rough.astype(np.float32)
    mask = refine_brain_mask(
        small, prior, zooms, core_mm=core_mm, grow_mm=grow_mm, dark_fraction=dark_fraction
    )
    # back to the input grid: linear interpolation of the (slightly smoothed) mask
    up = upsample_blocks(ndi.gaussian_filter(mask.astype(np.float32), 0.5), data.shape, factors)
    full = up > 0.5
    vox_ml = float(np.prod(zooms)) / 1000.0
    info = {
        "work_voxel_mm": [round(float(z), 4) for z in zooms],
        "head_ml": round(float(head.sum()) * vox_ml, 1),
        "rough_brain_ml": round(float(rough.sum()) * vox_ml, 1),
        "template_prior_ml": round(float((prior > 0.5).sum()) * vox_ml, 1),
        "template_rough_dice": round(agreement, 4),
        "template_prior_used": bool(agreement >= min_agreement),
        "brain_ml": round(float(full.sum()) * float(np.prod(voxel_sizes(img.affine))) / 1000.0, 1),
        "subject_to_mni_affine": np.round(matrix, 6).tolist(),
    }
    return full, info
