"""The atlas route's own cortex: Atropos tissue classes and the re-decided cortex/white-matter border."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from cmb.mars_region import CATEGORY, build_mars_labels, decode_label
from cmb.registration.native_tissue import TISSUE_CLASSES, refine_cortex, segment_tissue

ZOOMS = (1.0, 1.0, 2.0)


def _phantom(rng):
    """A slab brain: CSF on top, a 3 mm cortex, white matter below; a dark 2 mm microbleed in the WM."""
    shape = (40, 40, 24)
    z_mm = np.indices(shape)[2] * ZOOMS[2]
    truth = np.full(shape, TISSUE_CLASSES["wm"], np.uint8)
    truth[z_mm >= 30] = TISSUE_CLASSES["gm"]
    truth[z_mm >= 36] = TISSUE_CLASSES["csf"]
    # T2*-weighted order: CSF > GM > WM
    mean = {TISSUE_CLASSES["csf"]: 1.0, TISSUE_CLASSES["gm"]: 0.6, TISSUE_CLASSES["wm"]: 0.45}
    image = np.vectorize(mean.get)(truth).astype(np.float32)
    ball = (
        np.sum(
            (np.indices(shape) - np.array([20, 20, 8])[:, None, None, None]) ** 2
            * (np.array(ZOOMS) ** 2)[:, None, None, None],
            axis=0,
        )
        <= 4.0
    )
    image[ball] = 0.05
    image += rng.normal(0, 0.03, shape).astype(np.float32)
    # CSF is the widest class (flow, partial volume with vessels and meninges)
    csf = truth == TISSUE_CLASSES["csf"]
    image[csf] += rng.normal(0, 0.2, int(csf.sum())).astype(np.float32)
    return image, truth, ball


def _priors(truth, shift_mm):
    """The truth's classes shifted by ``shift_mm`` in z and blurred, as a warped population template's
    priors: smooth, and never 0 inside the brain (a floor of 0.1)."""
    out = []
    for value in (TISSUE_CLASSES["csf"], TISSUE_CLASSES["gm"], TISSUE_CLASSES["wm"]):
        p = ndi.shift(
            (truth == value).astype(np.float32),
            (0, 0, shift_mm / ZOOMS[2]),
            order=1,
            mode="nearest",
        )
        out.append(0.1 + ndi.gaussian_filter(p, (3.0, 3.0, 1.5)))
    total = np.sum(out, axis=0)
    return [p / total for p in out]


def test_atropos_finds_the_subjects_own_border_not_the_priors():
    """Priors shifted 4 mm into the white matter; the classes follow the image, and a microbleed takes WM."""
    image, truth, ball = _phantom(np.random.default_rng(3))
    img = nib.Nifti1Image(image, np.diag([*ZOOMS, 1.0]))
    mask = np.ones(image.shape, bool)
    priors = _priors(truth, shift_mm=-4.0)
    classes = segment_tissue(img, mask, priors, dark_focus_mm=2.5)
    assert (classes == truth).mean() > 0.95
    assert (classes[ball] == TISSUE_CLASSES["wm"]).mean() > 0.9
    without_closing = segment_tissue(img, mask, priors, dark_focus_mm=0.0)
    assert (without_closing[ball] == TISSUE_CLASSES["wm"]).mean() < 0.5


def test_refined_border_changes_juxtacortical_to_deep():
    """An atlas whose cortex reaches 6 mm too deep calls a point 8 mm under the real cortex lobar; refined, deep."""
    shape = (30, 30, 40)
    affine = np.eye(4)
    z = np.indices(shape)[2]
    tissue = np.full(shape, TISSUE_CLASSES["wm"], np.uint8)
    tissue[z >= 30] = TISSUE_CLASSES["gm"]
    dk = np.full(shape, 2, np.int32)  # Left-Cerebral-White-Matter
    dk[z >= 24] = 1028  # ctx-lh-superiorfrontal, 6 mm deeper than the subject's cortex
    point = (15, 15, 21)  # 9 mm under the real cortex, 3 mm under the atlas's
    brain = np.ones(shape, bool)
    atlas = build_mars_labels(dk, affine, brain=brain, tissue=brain).labels
    refined, summary = refine_cortex(dk, tissue, affine, cortex_search_mm=4.0)
    mine = build_mars_labels(refined, affine, brain=brain, tissue=brain).labels
    assert decode_label(int(atlas[point]))[0] == "lobar"
    assert decode_label(int(mine[point]))[0] == "deep"
    assert decode_label(int(mine[15, 15, 27]))[0] == "lobar"  # 3 mm under the cortex: juxtacortical
    assert summary["to_white_matter_ml"] > 0
    assert CATEGORY["deep_wm"] == "deep"


def test_atropos_gives_the_same_classes_twice():
    """Atropos seeds from the clock by default; the workflow's outputs must be byte-identical."""
    image, truth, _ = _phantom(np.random.default_rng(5))
    img = nib.Nifti1Image(image, np.diag([*ZOOMS, 1.0]))
    mask = np.ones(image.shape, bool)
    priors = _priors(truth, shift_mm=-4.0)
    first = segment_tissue(img, mask, priors)
    assert all(np.array_equal(first, segment_tissue(img, mask, priors)) for _ in range(3))
