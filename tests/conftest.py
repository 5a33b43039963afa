"""Shared pytest fixtures: small real NIfTI files and the real multi-echo GRE crop."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REAL_MEGRE = Path("/work/shared/data/real-megre-crop")


@pytest.fixture
def make_nifti():
    """Factory writing a small NIfTI: ``make_nifti(path, data=None, zooms=..., ...) -> Path``.

    Default data: 40 x 40 x 30 voxels of uniform noise in [10, 100) at 2 x 2 x 2.5 mm
    (80 x 80 x 75 mm, enough to pass the field-of-view check). ``kind="phase"``
    gives uniform radians in [-pi, pi) instead.
    """

    def make(
        path,
        data=None,
        *,
        shape=(40, 40, 30),
        zooms=(2.0, 2.0, 2.5),
        affine=None,
        kind="magnitude",
        dtype=np.float32,
        qform_code=1,
        sform_code=1,
        seed=0,
    ):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        if data is None:
            data = (
                rng.uniform(-np.pi, np.pi, shape)
                if kind == "phase"
                else rng.uniform(10, 100, shape)
            )
        if affine is None:
            affine = np.diag([*zooms, 1.0])
            affine[:3, 3] = -0.5 * np.asarray(np.shape(data)[:3]) * np.asarray(zooms)
        img = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
        img.header.set_sform(affine, code=sform_code)
        img.header.set_qform(affine, code=qform_code)
        nib.save(img, path)
        return path

    return make


@pytest.fixture
def real_megre():
    """Paths of the real 3-echo GRE crop (echo on the 4th axis; read-only)."""
    mag, phase = REAL_MEGRE / "Mag.nii", REAL_MEGRE / "Phase.nii"
    if not (mag.exists() and phase.exists()):
        pytest.skip("real MEGRE fixture not available")
    return {"mag": mag, "phase": phase}
