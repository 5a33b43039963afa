"""Registration of a subject to the MNI template (ANTsPy), and its quality record.

Pipeline of :func:`register_subject`:

1. optional SWI->T1w rigid registration (mutual information) when a T1w exists;
2. subject->MNI affine then SyN, both at a coarse resolution: the
   brain-masked subject image is block-averaged to ``step_mm`` (the config's
   ``register.step_mm``) and registered to the packaged ICBM 2009c template
   subsampled to the same step, at ``2 * step_mm`` then ``step_mm``. Both stages use mutual information, since
   SWI/T2* magnitude and T1 contrast differ (see :func:`register_to_mni` for
   the accuracy and time of the alternatives).
   With a T1w, the T1w is registered to the T1 template instead and the rigid
   SWI->T1w transform is folded into the affine;
3. transforms saved in ANTs formats, named BIDS-style (:class:`~cmb.registration.ants_adapter.XfmPaths`);
4. a quality JSON (:func:`registration_quality`);
5. the MNI MARS map (and optionally the Desikan-Killiany labels) warped to the
   native preprocessed grid with nearest-neighbour interpolation
   (:mod:`cmb.registration.warp_labels`).

Template contrast: for SWI/T2* magnitude (CSF bright, grey > white matter) the
T1 template is inverted inside its brain mask (``contrast="swi"``), which gives
the same intensity order; mutual information copes with the rest (dark
iron-rich nuclei).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from cmb.atomic import atomic_path, save_nifti, write_json
from cmb.cache import load_arrays, save_arrays
from cmb.config import default
from cmb.mars_map import write_label_table
from cmb.registration.ants_adapter import (
    LPS4,
    SOURCE_SPACE,
    XfmPaths,
    affine_matrix,
    ants_tempdir,
    import_ants,
    to_ants,
    write_affine,
    write_identity_warp,
    xfm_paths,
)
from cmb.registration.grids import downsample_blocks, downsample_image, resample_mask
from cmb.registration.warp_labels import warp_dk_to_native, warp_mars_to_native, write_dk_table
from cmb.template import TEMPLATE_NAME, template_t1_path

__all__ = [
    "mni_target",
    "register_rigid",
    "MNIRegistration",
    "register_to_mni",
    "registration_quality",
    "register_subject",
]

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- template


@functools.lru_cache(maxsize=8)
def _template_arrays(step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template T1 in [0, 1], its brain mask and affine, block-averaged by ``step``.

    Same normalisation and mask as :func:`cmb.template.load_mni`, without loading the
    priors and atlas (registration needs only the T1), and kept in the on-disk
    cache (:mod:`cmb.cache`): this saves ~1.5 s per registration call.
    """
    key = f"register-template-{TEMPLATE_NAME}-step{int(step)}"
    cached = load_arrays(key)
    if cached is not None:
        a = cached[0]
        return a["t1"], a["brain"].astype(bool), a["affine"]
    img = nib.load(template_t1_path())
    t1 = np.asanyarray(img.dataobj).astype(np.float32)
    t1 /= np.percentile(t1[t1 > 0], 99.5)
    brain = ndi.binary_fill_holes(ndi.binary_closing(t1 > 0.05, iterations=2))
    if step > 1:
        pad = [(0, (-s) % step) for s in t1.shape]
        t1, aff, _ = downsample_blocks(np.pad(t1, pad), img.affine, step)
        brain = downsample_blocks(np.pad(brain, pad).astype(np.float32), img.affine, step)[0] > 0.5
    else:
        aff = img.affine.copy()
    save_arrays(
        key, {"t1": t1, "brain": brain, "affine": aff}, {"template": str(template_t1_path())}
    )
    return t1, brain, aff


def mni_target(step: int = 4, contrast: str = "swi"):
    """Registration target: the packaged T1 template at ``step`` mm, and its brain mask.

    Parameters
    ----------
    step : int
        Subsampling of the 1 mm template grid (block average).
    contrast : {"swi", "t1"}
        ``"swi"`` inverts the T1 inside the brain (CSF bright, GM > WM), like SWI
        and T2* magnitude; ``"t1"`` keeps T1 contrast (for a T1w subject image).

    Returns
    -------
    image, mask : ants.ANTsImage
    """
    t1, brain, aff = _template_arrays(int(step))
    if contrast == "swi":
        data = np.where(brain, np.clip(1.3 - t1, 0.0, 1.3), 0.0)
    elif contrast == "t1":
        data = t1 * brain
    else:
        raise ValueError(f"contrast must be 'swi' or 't1', not {contrast!r}")
    ref = nib.Nifti1Image(data.astype(np.float32), aff)
    return to_ants(ref), to_ants(ref, brain.astype(np.float32))


# --------------------------------------------------------------------------- registration


def _copy(src, dst) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def register_rigid(
    fixed_img: nib.Nifti1Image,
    moving_img: nib.Nifti1Image,
    out_mat: str | os.PathLike,
    step_mm: float = 2.0,
) -> np.ndarray:
    """Rigid registration (mutual information) of ``moving`` to ``fixed``, e.g. SWI -> T1w.

    Both images are block-averaged to about ``step_mm`` first and registered at
    ``2 * step_mm`` then ``step_mm``. The transform (ANTs ``.mat``, resampling
    ``moving`` onto ``fixed``) is written to ``out_mat``. Mutual information is
    sampled on 5% of the voxels: on a synthetic SWI/T1w pair this took 5.5 s
    instead of 16 s at 20%, for a result within 0.1 mm.

    Returns
    -------
    (4, 4) ndarray
        RAS point matrix mapping ``fixed`` world coordinates to ``moving`` ones.
    """
    ants = import_ants()
    fixed = to_ants(downsample_image(fixed_img, step_mm))
    moving = to_ants(downsample_image(moving_img, step_mm))
    with ants_tempdir() as tmp:
        reg = ants.registration(
            fixed,
            moving,
            "Rigid",
            outprefix=str(tmp / "rigid_"),
            aff_iterations=(200, 100),
            aff_shrink_factors=(2, 1),
            aff_smoothing_sigmas=(1, 0),
            aff_random_sampling_rate=0.05,
        )
        mat = affine_matrix(ants.read_transform(reg["fwdtransforms"][0]))
        write_affine(mat, out_mat)
    return LPS4 @ mat @ LPS4


@dataclass
class MNIRegistration:
    """Result of :func:`register_to_mni` (paths are the saved transforms)."""

    xfm: XfmPaths
    quality: dict
    timings: dict


def register_to_mni(
    image: nib.Nifti1Image,
    mask: nib.Nifti1Image | np.ndarray,
    xfm: XfmPaths,
    *,
    step_mm: int,
    syn: bool,
    syn_iterations: Sequence[int],
    contrast: str = "swi",
    affine_iterations: Sequence[int] = (500, 250),
    syn_flow_sigma: float = 3.0,
    pre_affine: np.ndarray | None = None,
    syn_tolerance: float = 0.002,
) -> MNIRegistration:
    """Affine + SyN registration of a brain-masked subject image to the MNI template.

    Both images are block-averaged to ``step_mm`` and every stage runs at two
    levels, ``2 * step_mm`` then ``step_mm`` (the config's ``register`` section holds the
    workflow's settings). The SyN
    metric is mutual information, evaluated inside the (dilated) template brain
    mask only, which makes it ~3x faster than unmasked.

    Measured on a synthetic 0.5 x 0.5 x 2 mm SWI (``cmb synth --preset swi-3t``,
    known nonlinear warp; error at 400 brain points, median / 95th percentile),
    2 cores: affine only 3.1 / 6.0 mm (the best affine fit of the true warp is
    3.0 / 5.7); SyN at 8+4 mm 2.2 / 4.4 mm (7-12 s); SyN at 6+3 mm
    (``step_mm=3, syn_iterations=(40, 10)``) 2.1 / 4.2 mm (+5-10 s); SyN at
    8+4+2 mm with no 2 mm iterations, unmasked, 2.2 / 4.8 mm (22 s); SyN with an
    extra mean-squares term on the brain masks was worse. Part of the error is
    the synthetic anatomy: an unwarped synthetic head built from the packaged
    tissue priors (ICBM 2009a symmetric) registers with 1.6 mm median error,
    one built from the T1 template itself (2009c asymmetric) with 0.5 mm.

    Parameters
    ----------
    image : nibabel image
        Bias-corrected subject image (the preprocessed SWI, or a T1w).
    mask : nibabel image or bool ndarray
        Brain mask on ``image``'s grid.
    xfm : XfmPaths
        Where to write the four transform files.
    contrast : {"swi", "t1"}
        Template contrast to match (:func:`mni_target`).
    step_mm : int
        Working resolution of both images (template subsampling step).
    affine_iterations : sequence of 2 int
        Affine iterations at ``2 * step_mm`` and ``step_mm``. A further level at
        half of ``step_mm`` costs ~10x more time for < 0.1 mm median gain.
    syn : bool
        Run SyN after the affine; if False, the warps are identity fields.
    syn_iterations : sequence of int
        SyN iterations per level (shrink factors ``2**(n-1), ..., 1`` of the
        ``step_mm`` grid).
    syn_flow_sigma : float
        Regularisation of the SyN update field (voxels).
    pre_affine : (4, 4) ndarray, optional
        RAS point matrix from the space whose transforms are wanted to the
        registered ``image`` space (e.g. SWI -> T1w rigid, when ``image`` is the
        T1w); folded into the saved affine so that the transforms act on that space.
    syn_tolerance : float
        If SyN lowers the normalised mutual information with the template by more
        than this (a failed SyN), it is discarded and identity warps are saved.

    Returns
    -------
    MNIRegistration
    """
    ants = import_ants()
    timings = {}
    t0 = time.perf_counter()
    mask_arr = np.asanyarray(mask.dataobj if isinstance(mask, nib.Nifti1Image) else mask) > 0
    fixed, fixed_mask = mni_target(step_mm, contrast)
    metric_mask = fixed_mask.new_image_like(
        ndi.binary_dilation(fixed_mask.numpy() > 0.5).astype(np.float32)
    )
    moving = to_ants(downsample_image(image, step_mm, mask_arr))
    small_mask = downsample_blocks(mask_arr.astype(np.float32), image.affine, step_mm)[0] > 0.5
    moving_mask = moving.new_image_like(small_mask.astype(np.float32))
    timings["prepare_s"] = time.perf_counter() - t0
    with ants_tempdir() as tmp:
        t0 = time.perf_counter()
        aff = ants.registration(
            fixed,
            moving,
            "Affine",
            outprefix=str(tmp / "aff_"),
            aff_metric="mattes",
            aff_iterations=tuple(affine_iterations),
            aff_shrink_factors=(2, 1),
            aff_smoothing_sigmas=(1, 0),
            aff_random_sampling_rate=0.2,
        )
        affine_mat = aff["fwdtransforms"][0]
        timings["affine_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if syn:
            reg = ants.registration(
                fixed,
                moving,
                "SyNOnly",
                initial_transform=affine_mat,
                outprefix=str(tmp / "syn_"),
                mask=metric_mask,
                syn_metric="mattes",
                syn_sampling=32,
                reg_iterations=tuple(syn_iterations),
                flow_sigma=syn_flow_sigma,
                total_sigma=0.0,
            )
            fwd_warp = next(p for p in reg["fwdtransforms"] if p.endswith("Warp.nii.gz"))
            inv_warp = next(p for p in reg["invtransforms"] if p.endswith("InverseWarp.nii.gz"))
        timings["syn_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        quality = _warped_quality(fixed, fixed_mask, moving, moving_mask, [affine_mat])
        quality = {f"{k}_affine": v for k, v in quality.items()}
        syn_used = False
        if syn:
            after = _warped_quality(fixed, fixed_mask, moving, moving_mask, [fwd_warp, affine_mat])
            if after["nmi"] < quality["nmi_affine"] - syn_tolerance:
                _log.warning(
                    "SyN lowered the NMI (%.4f -> %.4f); keeping the affine only",
                    quality["nmi_affine"],
                    after["nmi"],
                )
            else:
                syn_used = True
                quality.update(after)
        if not syn_used:
            quality.update({k.removesuffix("_affine"): v for k, v in list(quality.items())})
        quality.update(contrast=contrast, step_mm=step_mm, syn=syn_used, syn_requested=syn)
        timings["quality_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        mat = affine_matrix(ants.read_transform(affine_mat))
        if pre_affine is not None:
            # template point -> image point (mat), then image point -> source point
            mat = (LPS4 @ np.linalg.inv(pre_affine) @ LPS4) @ mat
        write_affine(mat, xfm.fwd_affine)
        write_affine(np.linalg.inv(mat), xfm.inv_affine)
        if syn_used:
            _copy(fwd_warp, xfm.fwd_warp)
            _copy(inv_warp, xfm.inv_warp)
        else:
            write_identity_warp(fixed, xfm.fwd_warp)
            write_identity_warp(fixed, xfm.inv_warp)
        timings["write_s"] = time.perf_counter() - t0
    return MNIRegistration(xfm=xfm, quality=quality, timings=timings)


def _warped_quality(fixed, fixed_mask, moving, moving_mask, transforms) -> dict:
    ants = import_ants()
    no = [False] * len(transforms)
    warped = ants.apply_transforms(
        fixed, moving, transforms, interpolator="linear", singleprecision=True, whichtoinvert=no
    )
    wmask = ants.apply_transforms(
        fixed,
        moving_mask,
        transforms,
        interpolator="linear",
        singleprecision=True,
        whichtoinvert=no,
    )
    return registration_quality(
        warped.numpy(), fixed.numpy(), fixed_mask.numpy() > 0.5, wmask.numpy() > 0.5
    )


def registration_quality(
    warped: np.ndarray,
    template: np.ndarray,
    template_mask: np.ndarray,
    warped_mask: np.ndarray | None = None,
    bins: int = 32,
) -> dict:
    """Similarity of a subject image warped to the template, inside the template brain.

    Returns
    -------
    dict
        ``nmi``: normalised mutual information (H(A) + H(B)) / H(A, B), 1 (independent)
        to 2 (one is a function of the other), contrast-independent;
        ``correlation``: Pearson correlation (sign depends on the contrasts);
        ``mask_dice`` (when ``warped_mask`` is given): Dice of the warped subject brain
        mask and the template brain mask; ``coverage``: fraction of the template brain
        inside the warped subject mask.

    >>> rng = np.random.default_rng(0)
    >>> t = rng.random((20, 20, 20)); m = np.ones(t.shape, bool)
    >>> q_same = registration_quality(1 - t, t, m)
    >>> q_noise = registration_quality(rng.random(t.shape), t, m)
    >>> q_same["nmi"] > 1.9 > 1.1 > q_noise["nmi"], round(q_same["correlation"], 3)
    (True, -1.0)
    """
    sel = template_mask & np.isfinite(warped)
    a = warped[sel].astype(np.float64)
    b = template[sel].astype(np.float64)
    out = {}
    if a.size < 10 or np.ptp(a) == 0 or np.ptp(b) == 0:
        out.update(nmi=1.0, correlation=0.0)
    else:
        h, _, _ = np.histogram2d(a, b, bins=bins)
        p = h / h.sum()
        ent = lambda q: float(-(q[q > 0] * np.log(q[q > 0])).sum())  # noqa: E731
        out["nmi"] = (ent(p.sum(0)) + ent(p.sum(1))) / ent(p)
        out["correlation"] = float(np.corrcoef(a, b)[0, 1])
    if warped_mask is not None:
        inter = float((warped_mask & template_mask).sum())
        out["mask_dice"] = 2 * inter / max(float(warped_mask.sum() + template_mask.sum()), 1.0)
        out["coverage"] = inter / max(float(template_mask.sum()), 1.0)
    return {k: round(float(v), 5) for k, v in out.items()}


# --------------------------------------------------------------------------- subject


def register_subject(
    image: str | os.PathLike,
    mask: str | os.PathLike,
    out_prefix: str | os.PathLike,
    *,
    out_quality: str | os.PathLike | None = None,
    t1w: str | os.PathLike | None = None,
    mars_mni: str | os.PathLike | None = None,
    out_mars: str | os.PathLike | None = None,
    out_mars_tsv: str | os.PathLike | None = None,
    out_dk: str | os.PathLike | None = None,
    source_space: str = SOURCE_SPACE,
    step_mm: int = default("register", "step_mm"),
    syn: bool = default("register", "syn"),
    syn_iterations: Sequence[int] = tuple(default("register", "syn_iterations")),
    interpolation: str = default("register", "label_interpolation"),
    parcellation: str | os.PathLike | None = None,
    parcellation_root: str | os.PathLike | None = None,
    parcellation_refused: str | None = None,
    mars_options: dict | None = None,
    parcellation_min_dice: float = default("mars", "parcellation_min_dice"),
    native_tissue: dict | None = None,
) -> dict:
    """Register one subject to MNI, save transforms and quality, warp the MARS map.

    Parameters
    ----------
    image, mask : path
        Preprocessed (bias-corrected, RAS) SWI/T2* magnitude and its brain mask.
    out_prefix : path
        Transform names start with it (:func:`xfm_paths`); with a T1w, the rigid
        ``<prefix>_from-<source>_to-T1w_mode-image_xfm.mat`` is written too.
    out_quality : path, optional
        Quality JSON (:func:`registration_quality` numbers, timings, files).
    t1w : path, optional
        T1w of the same session: registered rigidly to the SWI's space, and used
        (T1 contrast) for the template registration.
    mars_mni : path, optional
        MNI-space MARS dseg (``python -m cmb.mars_map``); built in memory if omitted.
    out_mars, out_mars_tsv : path, optional
        Native MARS dseg and its label table (:func:`cmb.mars_region.label_table`).
    out_dk : path, optional
        Native Desikan-Killiany labels (with their TSV next to it).
    source_space : str
        Space label of the subject image in the transform names.
    step_mm, syn, syn_iterations : optional
        See :func:`register_to_mni`.
    interpolation : str
        Label interpolation (:func:`~cmb.registration.warp_labels.warp_labels_to_native`).
    parcellation : path, optional
        The session's own T1w-space parcellation (:mod:`cmb.parcellation`): with a T1w,
        the native MARS map comes from it instead of the warped atlas. Without a T1w, or
        when it does not fit the SWI brain (``parcellation_min_dice``), the atlas map is
        kept and the reason goes to the report (``parcellation_refused``).
    parcellation_root : path, optional
        ``mars.parcellation_dir`` (``parcellation_source`` names the file relative to it).
    parcellation_refused : str, optional
        Why the workflow found no usable parcellation for the session (recorded as
        ``parcellation_refused``; the atlas route is used).
    mars_options : dict, optional
        juxtacortical_mm, insula_juxtacortical_mm, capsule_mm, label_search_mm for the
        parcellation's MARS map (as the MNI map was built with).
    native_tissue : dict, optional
        ``dark_focus_mm`` and ``cortex_search_mm``: the atlas route takes the
        cortex/white-matter border from the subject's own tissue classes
        (:mod:`cmb.registration.native_tissue`); None warps the MNI MARS map as it is.

    Returns
    -------
    dict
        The quality report (also written to ``out_quality``).
    """
    t_start = time.perf_counter()
    import_ants()  # the first import of ANTsPy takes seconds: timed on its own
    timings = {"import_ants_s": time.perf_counter() - t_start}
    img = nib.load(image)
    mask_img = nib.load(mask)
    xfm = xfm_paths(out_prefix, source=source_space)
    report: dict = {"image": str(image), "mask": str(mask), "template": TEMPLATE_NAME}
    swi_to_t1 = None
    if t1w is not None:
        t0 = time.perf_counter()
        t1_img = nib.as_closest_canonical(nib.load(t1w))
        rigid_path = Path(f"{out_prefix}_from-{source_space}_to-T1w_mode-image_xfm.mat")
        t1_img = downsample_image(t1_img, 2.0)  # all T1w work is at 2 mm or coarser
        # fixed = SWI, moving = T1w: maps SWI points to T1w points
        swi_to_t1 = register_rigid(img, t1_img, rigid_path)
        t1_mask = resample_mask(downsample_image(mask_img, 2.0), t1_img, swi_to_t1)
        timings["rigid_t1w_s"] = time.perf_counter() - t0
        # T1w -> MNI; the saved transforms act on SWI space: SWI point = inv(swi_to_t1) @ T1w point
        reg = register_to_mni(
            t1_img,
            t1_mask,
            xfm,
            contrast="t1",
            step_mm=step_mm,
            syn=syn,
            syn_iterations=syn_iterations,
            pre_affine=swi_to_t1,
        )
        report["t1w"] = str(t1w)
        report["rigid_to_t1w"] = str(rigid_path)
    else:
        reg = register_to_mni(
            img,
            mask_img,
            xfm,
            contrast="swi",
            step_mm=step_mm,
            syn=syn,
            syn_iterations=syn_iterations,
        )
    timings.update({f"mni_{k}": v for k, v in reg.timings.items()})
    report["quality"] = reg.quality
    report["transforms"] = {
        k: str(getattr(xfm, k)) for k in ("fwd_affine", "fwd_warp", "inv_affine", "inv_warp")
    }

    if out_mars is not None:
        t0 = time.perf_counter()
        native = warp_mars_to_native(
            img,
            mask_img,
            xfm,
            report,
            swi_to_t1=swi_to_t1,
            mars_mni=mars_mni,
            interpolation=interpolation,
            parcellation=parcellation,
            parcellation_root=parcellation_root,
            parcellation_refused=parcellation_refused,
            mars_options=mars_options,
            native_tissue=native_tissue,
            parcellation_min_dice=parcellation_min_dice,
        )
        save_nifti(native, out_mars)
        if out_mars_tsv is not None:
            write_label_table(out_mars_tsv)
        report["mars_dseg"] = str(out_mars)
        timings["warp_mars_s"] = time.perf_counter() - t0
    if out_dk is not None:
        t0 = time.perf_counter()
        dk, dk_names = warp_dk_to_native(img, xfm, interpolation=interpolation)
        save_nifti(dk, out_dk)
        write_dk_table(dk_names, str(out_dk).replace(".nii.gz", ".tsv"))
        report["dk_dseg"] = str(out_dk)
        timings["warp_dk_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    report["timings"] = {k: round(v, 3) for k, v in timings.items()}
    if out_quality is not None:
        write_json(out_quality, report)
    return report
