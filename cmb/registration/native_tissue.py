"""The subject's own cortex for the atlas route's MARS map: Atropos tissue classes in native space.

A template's gyri and sulci, warped to a subject, sit where the template has them: a
registration that aligns the brain's outline does not align its folding, and sulcal
fundi of the template land several millimetres inside the subject's white matter. The
MARS call between juxtacortical (lobar) and deep white matter depends on the distance
to cortex (``mars.juxtacortical_mm``), so a warped atlas alone calls deep white matter
juxtacortical where a template sulcus reaches into it. Measured on the cross-simulator
cohort (whose heads were never registered to the template), every category miss of
the matched detections was such a case (docs/benchmarks.md, "MARS of matched
detections").

Here the cortex/white-matter border comes from the subject's own image:

1. dark foci narrower than a ball of ``dark_focus_mm`` (microbleeds, veins, the very
   lesions being localized) are closed (grey-scale closing with a ball of that radius,
   in mm), so a microbleed takes the tissue class around it, not a class of its own;
2. ANTs Atropos classifies the brain into CSF, grey and white matter on the preprocessed
   magnitude, initialized from and weighted with (prior weight 0.25, ANTs' default) the
   ICBM 2009 tissue priors warped through the subject's transforms; the classes follow
   the priors, so the method holds for any contrast order (SWI, T2*-GRE or T1w);
3. the warped Desikan-Killiany labels are re-decided where they say cortex (hippocampus
   and amygdala included), cerebral white matter or nothing (:func:`refine_cortex`):
   native white matter becomes cerebral white matter of its hemisphere; native grey
   matter within ``cortex_search_mm`` of the atlas's grey matter becomes the nearest
   atlas gyrus (so the lobe still comes from the atlas), unless a deep nucleus is nearer. Deep grey nuclei, ventricles, brainstem and cerebellum keep their atlas
   labels: their borders are a matter of registration, not of folding, and on SWI the
   iron of the pallidum and putamen makes them as dark as white matter.

:func:`cmb.mars_region.build_mars_labels` then rasterizes MARS on the native grid from
that parcellation, with the same lookup table and distances as every other route.
"""

from __future__ import annotations

import logging
import time

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from cmb.config import default
from cmb.mars_region import (
    CATEGORY,
    CEREBRAL_WHITE_MATTER,
    CORTEX,
    FREESURFER_MARS,
    REGIONS,
    UNLABELLED,
)
from cmb.registration.ants_adapter import XfmPaths, ants_tempdir, import_ants, to_ants
from cmb.template import MNIResources

__all__ = [
    "TISSUE_CLASSES",
    "TISSUE_METHOD",
    "FOLDED_GREY",
    "DEEP_GREY",
    "close_dark_foci",
    "warp_priors_to_native",
    "segment_tissue",
    "refine_cortex",
    "native_tissue_parcellation",
]

_log = logging.getLogger(__name__)

#: Class values of :func:`segment_tissue` (0 outside the brain).
TISSUE_CLASSES = {"csf": 1, "gm": 2, "wm": 3}
TISSUE_METHOD = (
    "ANTs Atropos (3 classes, warped ICBM 2009 priors, prior weight 0.25, MRF 0.1, constant seed)"
)
_PRIOR_WEIGHT = 0.25
_MRF = "[0.1,1x1x1]"
_ITERATIONS = "[5,0]"
_LEFT_WM, _RIGHT_WM = 2, 41


def _zooms(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))


def close_dark_foci(image: np.ndarray, zooms, radius_mm: float) -> np.ndarray:
    """Grey-scale closing with a ball of ``radius_mm`` (in mm, on anisotropic voxels).

    Fills dark structures narrower than the ball (a microbleed, a vein) with the
    surrounding intensity and leaves larger ones.

    >>> img = np.ones((9, 9, 9), np.float32); img[4, 4, 4] = 0.0
    >>> float(close_dark_foci(img, (1.0, 1.0, 1.0), 1.5)[4, 4, 4])
    1.0
    """
    zooms = np.asarray(zooms, float)
    reach = np.floor(radius_mm / zooms).astype(int)
    if radius_mm <= 0 or not reach.any():
        return image
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in reach)]
    ball = sum((g * z / radius_mm) ** 2 for g, z in zip(grid, zooms)) <= 1.0
    return ndi.grey_closing(image, footprint=ball)


def warp_priors_to_native(
    mni: MNIResources, reference: nib.Nifti1Image, xfm: XfmPaths
) -> list[np.ndarray]:
    """The template's CSF, GM and WM probabilities on the subject grid (linear interpolation)."""
    ants = import_ants()
    ref = to_ants(reference, np.zeros(reference.shape[:3], np.float32))
    template = nib.Nifti1Image(np.zeros(mni.shape, np.float32), mni.affine)
    out = []
    for prior in (mni.csf, mni.gm, mni.wm):
        warped = ants.apply_transforms(
            ref,
            to_ants(template, prior),
            xfm.to_source,
            interpolator="linear",
            singleprecision=True,
            whichtoinvert=[False, False],
        )
        out.append(np.clip(warped.numpy(), 0.0, 1.0).astype(np.float32))
    return out


def segment_tissue(
    img: nib.Nifti1Image,
    mask: np.ndarray,
    priors: list[np.ndarray],
    dark_focus_mm: float = default("mars", "dark_focus_mm"),
) -> np.ndarray:
    """CSF / GM / WM classes (:data:`TISSUE_CLASSES`) of a brain on its own grid.

    Parameters
    ----------
    img : nibabel image
        The preprocessed magnitude (any contrast: the classes follow ``priors``).
    mask : (X, Y, Z) bool
        The brain mask; outside it the class is 0.
    priors : list of three (X, Y, Z) arrays
        CSF, GM and WM probabilities on the same grid (:func:`warp_priors_to_native`).
    dark_focus_mm : float
        Radius of the closing that fills microbleeds and veins first (:func:`close_dark_foci`).
    """
    ants = import_ants()
    mask = np.asarray(mask, bool)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data = close_dark_foci(data, _zooms(img.affine), dark_focus_mm)
    with ants_tempdir():  # ANTsPy writes the priors to temporary files and leaves them
        result = ants.atropos(
            a=to_ants(img, data),
            x=to_ants(img, mask.astype(np.float32)),
            i=[to_ants(img, p) for p in priors],
            m=_MRF,
            c=_ITERATIONS,
            priorweight=_PRIOR_WEIGHT,
            r=0,  # Atropos seeds its sampler from the clock unless told: a constant seed
        )
        probabilities = np.stack([p.numpy() for p in result["probabilityimages"]])
    classes = (np.argmax(probabilities, axis=0) + 1).astype(np.uint8)
    classes[~mask] = 0
    return classes


def _label_set(*classes: str) -> np.ndarray:
    return np.array(sorted(v for v, (_, c) in FREESURFER_MARS.items() if c in classes), np.int32)


#: Grey matter whose extent folding decides (re-decided by the subject's tissue): cortex,
#: with the hippocampus and amygdala (lobar, temporal).
FOLDED_GREY = _label_set(*(r for r in REGIONS if CATEGORY[r] == "lobar"), CORTEX)
#: Deep grey nuclei: kept (on SWI, iron makes the pallidum and putamen as dark as white
#: matter); a native grey-matter voxel nearest to one keeps its atlas label.
DEEP_GREY = _label_set("basal_ganglia", "thalamus")
#: Cerebral white matter and unlabelled tissue: re-decided.
REDECIDED = np.concatenate([FOLDED_GREY, _label_set(CEREBRAL_WHITE_MATTER, UNLABELLED)])


def refine_cortex(
    dk: np.ndarray,
    tissue: np.ndarray,
    affine: np.ndarray,
    cortex_search_mm: float = default("mars", "cortex_search_mm"),
) -> tuple[np.ndarray, dict]:
    """The warped Desikan-Killiany labels with the cortex/white-matter border of ``tissue``.

    Where the atlas says cortex (hippocampus and amygdala included), cerebral white matter
    or nothing: the subject's white matter becomes cerebral white matter (the hemisphere
    of the nearest atlas white matter), and its grey matter within ``cortex_search_mm``
    of the atlas's grey matter becomes the nearest atlas gyrus, unless a deep nucleus is
    nearer: then it keeps its atlas label (grey-looking white matter beside a caudate or
    between the thalamus and the lentiform nucleus, the internal capsule, is never cortex,
    and no nucleus is grown either).

    Parameters
    ----------
    dk : (X, Y, Z) int
        FreeSurfer-numbered labels (aparc+aseg) warped to the subject grid.
    tissue : (X, Y, Z) int
        :func:`segment_tissue` classes on the same grid.
    affine : (4, 4) array
        Voxel to world (mm).
    cortex_search_mm : float
        Native grey matter takes a grey label only within this distance of the atlas's.

    Returns
    -------
    labels : (X, Y, Z) int32
    summary : dict
        Volumes (ml) relabelled each way.

    Examples
    --------
    Atlas cortex on x < 4, white matter beyond; the subject's own border is at x = 6:

    >>> dk = np.full((10, 3, 3), 2); dk[:4] = 1028
    >>> tissue = np.full(dk.shape, 3); tissue[:6] = 2
    >>> labels, info = refine_cortex(dk, tissue, np.eye(4), cortex_search_mm=4.0)
    >>> labels[:, 1, 1].tolist()
    [1028, 1028, 1028, 1028, 1028, 1028, 2, 2, 2, 2]
    >>> tissue[:2] = 3; refine_cortex(dk, tissue, np.eye(4))[0][:, 1, 1].tolist()[:3]
    [2, 2, 1028]

    Grey-looking white matter nearer to a caudate (11) than to any cortex stays white matter:

    >>> dk[7:] = 11; tissue[:] = 3; tissue[6] = 2
    >>> refine_cortex(dk, tissue, np.eye(4))[0][:, 1, 1].tolist()
    [2, 2, 2, 2, 2, 2, 2, 11, 11, 11]
    """
    dk = np.asarray(dk).astype(np.int32)
    tissue = np.asarray(tissue)
    zooms = _zooms(affine)
    labels = dk.copy()
    summary = {"to_white_matter_ml": 0.0, "to_grey_ml": 0.0}
    zone = (tissue > 0) & np.isin(dk, REDECIDED)
    found = ndi.find_objects(zone.astype(np.uint8))
    if not found:
        return labels, summary
    box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in found[0])
    voxel_ml = float(np.prod(zooms)) / 1000.0
    sub_dk, sub_zone, sub_tissue = dk[box], zone[box], tissue[box]
    sub_labels = labels[box]
    white = np.isin(sub_dk, (_LEFT_WM, _RIGHT_WM))
    if white.any():
        _, idx = ndi.distance_transform_edt(~white, sampling=zooms, return_indices=True)
        to_wm = sub_zone & (sub_tissue == TISSUE_CLASSES["wm"]) & ~white
        sub_labels[to_wm] = sub_dk[tuple(idx)][to_wm]
        summary["to_white_matter_ml"] = round(float(to_wm.sum()) * voxel_ml, 2)
    grey = np.isin(sub_dk, FOLDED_GREY) | np.isin(sub_dk, DEEP_GREY)
    if grey.any():
        dist, idx = ndi.distance_transform_edt(~grey, sampling=zooms, return_indices=True)
        nearest = sub_dk[tuple(idx)]
        to_grey = (
            sub_zone
            & (sub_tissue == TISSUE_CLASSES["gm"])
            & (dist <= cortex_search_mm)
            & ~np.isin(sub_dk, FOLDED_GREY)
            & np.isin(nearest, FOLDED_GREY)
        )
        sub_labels[to_grey] = nearest[to_grey]
        summary["to_grey_ml"] = round(float(to_grey.sum()) * voxel_ml, 2)
    labels[box] = sub_labels
    return labels, summary


def native_tissue_parcellation(
    img: nib.Nifti1Image,
    mask: np.ndarray,
    xfm: XfmPaths,
    mni: MNIResources,
    dk: np.ndarray,
    *,
    dark_focus_mm: float = default("mars", "dark_focus_mm"),
    cortex_search_mm: float = default("mars", "cortex_search_mm"),
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The refined parcellation (:func:`refine_cortex`), the tissue mask for label 0, and a record.

    The tissue mask (warped GM + WM > 0.5) tells :func:`cmb.mars_region.build_mars_labels`
    which unlabelled voxels inside the brain are tissue, as the MNI map does.
    """
    t0 = time.perf_counter()
    priors = warp_priors_to_native(mni, img, xfm)
    tissue = segment_tissue(img, mask, priors, dark_focus_mm=dark_focus_mm)
    labels, summary = refine_cortex(dk, tissue, img.affine, cortex_search_mm=cortex_search_mm)
    voxel_ml = float(np.prod(_zooms(img.affine))) / 1000.0
    record = {
        "method": TISSUE_METHOD,
        "dark_focus_mm": float(dark_focus_mm),
        "cortex_search_mm": float(cortex_search_mm),
        **{
            f"{name}_ml": round(float((tissue == value).sum()) * voxel_ml, 1)
            for name, value in TISSUE_CLASSES.items()
        },
        **summary,
    }
    _log.info(
        "native tissue: GM %.0f ml, WM %.0f ml; %.1f ml atlas cortex -> white matter, "
        "%.1f ml -> grey matter (%.1f s)",
        record["gm_ml"],
        record["wm_ml"],
        record["to_white_matter_ml"],
        record["to_grey_ml"],
        time.perf_counter() - t0,
    )
    return labels, mask & ((priors[1] + priors[2]) > 0.5), record
