"""QC figures: written atomically in the asked format, from small real NIfTI files."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from matplotlib.image import imread

from cmb.qc_figures import main, orthogonal_slices, plot_brain_mask, plot_registration


@pytest.fixture
def volumes(tmp_path):
    """An anisotropic RAS image with a bright ellipsoid 'brain', its mask and two-label atlas."""
    shape = (60, 70, 24)
    aff = np.diag([1.0, 1.0, 2.5, 1.0])
    ijk = np.indices(shape).astype(float)
    r = ((ijk[0] - 30) / 22) ** 2 + ((ijk[1] - 35) / 28) ** 2 + ((ijk[2] - 12) / 9) ** 2
    image = np.where(r < 1, 1.0, 0.05) + np.random.default_rng(0).normal(0, 0.02, shape)
    mask = (r < 1).astype(np.uint8)
    labels = np.where(r < 1, np.where(ijk[0] < 30, 1, 101), 0).astype(np.int16)
    paths = {}
    for name, data in (("image", image.astype(np.float32)), ("mask", mask), ("dseg", labels)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, aff), paths[name])
    return paths


def test_registration_figure_png(volumes, tmp_path):
    out = tmp_path / "sub-01_desc-registration_T2starw.png"
    plot_registration(volumes["image"], volumes["dseg"], out, title="sub-01")
    img = imread(out)
    assert img.shape[1] > img.shape[0] > 100  # three planes side by side
    # atlas edges are drawn in yellow: some pixels have high red+green and low blue
    rgb = img[..., :3]
    assert np.any((rgb[..., 0] > 0.8) & (rgb[..., 1] > 0.7) & (rgb[..., 2] < 0.3))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_brain_mask_figure_svg_via_cli(volumes, tmp_path):
    out = tmp_path / "sub-01_desc-brain_mask.svg"
    assert (
        main(
            [
                "mask",
                "--image",
                str(volumes["image"]),
                "--mask",
                str(volumes["mask"]),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = out.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and text.count("<image") >= 7


def test_mismatched_grids_are_rejected(volumes, tmp_path):
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), np.eye(4)), small)
    with pytest.raises(ValueError, match="grid"):
        plot_brain_mask(volumes["image"], small, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_slices_go_through_the_mask_centre():
    m = np.zeros((20, 30, 10), bool)
    m[10:14, 5:9, 6:8] = True
    assert orthogonal_slices(m.shape, m) == (11, 6, 6)
    assert orthogonal_slices(m.shape, np.zeros_like(m)) == (10, 15, 5)
