"""Preprocessing on real NIfTI files: a `cmb synth` tiny subject (1.5 x 1.5 x 2.5 mm, oblique grid).

Truth comes from the generator: the brain mask on the acquired grid and the
scanner -> MNI coordinate map (for the MARS region of each voxel).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from cmb.preprocess import (
    highpass_phase,
    main,
    n4_bias_correct,
    preprocess_subject,
    reorient_to_ras,
)
from cmb.synth import SynthOptions, synthesize

TRUTH = Path("derivatives/cmb-truth")


def ingest_like(bids: Path, out: Path) -> dict:
    """Float32 magnitude / radian phase / T1w / truth paths of the first synthetic scan."""
    out.mkdir(parents=True, exist_ok=True)
    mag_src = next(bids.rglob("*part-mag*.nii.gz"))
    img = nib.load(mag_src)
    mag = out / "mag.nii.gz"
    nib.save(nib.Nifti1Image(img.get_fdata(dtype=np.float32), img.affine), mag)
    ph_img = nib.load(next(bids.rglob("*part-phase*.nii.gz")))
    phase = out / "phase.nii.gz"
    nib.save(nib.Nifti1Image(ph_img.get_fdata(dtype=np.float32), ph_img.affine), phase)
    truth = bids / TRUTH
    t1w = list(bids.rglob("*_T1w.nii.gz"))
    return {
        "mag": mag,
        "phase": phase,
        "t1w": t1w[0] if t1w else None,
        "brain": next(truth.rglob("*_desc-brain_mask.nii.gz")),
        "to_mni": next(truth.rglob("*_from-scanner_to-MNI152NLin2009cAsym_mode-points_xfm.nii.gz")),
        "cmb_tsv": next(truth.rglob("*_label-CMB_dseg.tsv")),
        "synth_json": next(truth.rglob("*_synth.json")),
    }


def truth_to_mni(map_img: nib.Nifti1Image, points: np.ndarray) -> np.ndarray:
    """MNI mm of scanner mm points, by linear interpolation of the generator's coordinate map."""
    vox = np.linalg.inv(map_img.affine) @ np.c_[points, np.ones(len(points))].T
    c = map_img.get_fdata(dtype=np.float32)
    return np.stack(
        [ndi.map_coordinates(c[..., k], vox[:3], order=1, mode="nearest") for k in range(3)], 1
    )


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    root = tmp_path_factory.mktemp("preprocess")
    synthesize(
        SynthOptions(
            out=root / "bids",
            n_subjects=1,
            seed=5,
            preset="tiny",
            n_cmb=6,
            phase_units="rad",
            paramagnetic_phase="negative",
        ),
        log=lambda m: None,
    )
    return ingest_like(root / "bids", root / "ingested")


@pytest.fixture(scope="module")
def preprocessed(subject, tmp_path_factory):
    """The whole preprocessing, run once through the command line."""
    out = tmp_path_factory.mktemp("preproc_out")
    paths = {
        k: out / f"sub-01_{k}" for k in ("mag.nii.gz", "mask.nii.gz", "phase.nii.gz", "report.json")
    }
    argv = [
        "--mag",
        str(subject["mag"]),
        "--phase",
        str(subject["phase"]),
        "--out-mag",
        str(paths["mag.nii.gz"]),
        "--out-mask",
        str(paths["mask.nii.gz"]),
        "--out-phase",
        str(paths["phase.nii.gz"]),
        "--out-json",
        str(paths["report.json"]),
        "--paramagnetic-phase",
        "negative",
        "--threads",
        "2",
    ]
    assert main(argv) == 0
    return {
        "mag": paths["mag.nii.gz"],
        "mask": paths["mask.nii.gz"],
        "phase": paths["phase.nii.gz"],
        "report": paths["report.json"],
    }


def _world(affine, ijk):
    return (affine @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T


def test_reorientation_keeps_world_coordinates_exactly():
    # oblique grid stored in a permuted, flipped order (PIL-like)
    rot = np.array([[0.0, 0.0, -1.0], [-0.97, 0.24, 0.0], [0.24, 0.97, 0.0]])
    aff = np.eye(4)
    aff[:3, :3] = rot * [0.5, 0.5, 2.0]
    aff[:3, 3] = [12.0, -30.0, 7.5]
    data = np.arange(6 * 7 * 5, dtype=np.float32).reshape(6, 7, 5)
    ras = reorient_to_ras(nib.Nifti1Image(data, aff))
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    out = np.asanyarray(ras.dataobj)
    assert sorted(out.ravel()) == sorted(data.ravel())  # no resampling
    ijk_out = np.argwhere(np.ones(out.shape, bool))
    ijk_in = np.array([np.argwhere(data == v)[0] for v in out[tuple(ijk_out.T)]])
    np.testing.assert_allclose(_world(ras.affine, ijk_out), _world(aff, ijk_in), atol=1e-9)


def test_reorientation_of_ras_input_changes_nothing():
    img = nib.Nifti1Image(
        np.random.default_rng(0).random((4, 5, 6)).astype(np.float32), np.diag([1.0, 2.0, 3.0, 1])
    )
    ras = reorient_to_ras(img)
    assert np.array_equal(ras.affine, img.affine) and np.array_equal(
        np.asanyarray(ras.dataobj), img.dataobj
    )


def test_preprocessed_outputs_are_ras_float32_on_the_input_grid(subject, preprocessed):
    src = nib.load(subject["mag"])
    mag = nib.load(preprocessed["mag"])
    mask = nib.load(preprocessed["mask"])
    assert nib.aff2axcodes(mag.affine) == ("R", "A", "S")
    assert mag.get_data_dtype() == np.float32 and mask.get_data_dtype() == np.uint8
    assert np.allclose(mag.affine, mask.affine)
    # same voxel centres in the world as the input, only in another order
    corners = (
        np.array(np.meshgrid(*[[0, s - 1] for s in src.shape], indexing="ij")).reshape(3, -1).T
    )
    mine = np.array(np.meshgrid(*[[0, s - 1] for s in mag.shape], indexing="ij")).reshape(3, -1).T
    a, b = _world(src.affine, corners), _world(mag.affine, mine)
    assert all(np.min(np.linalg.norm(b - p, axis=1)) < 1e-4 for p in a)  # float32 header precision
    m = np.asanyarray(mask.dataobj) > 0
    assert np.median(np.asanyarray(mag.dataobj)[m]) == pytest.approx(1.0, abs=1e-3)


def test_brain_mask_keeps_cortex_and_cerebellum(subject, preprocessed):
    from cmb.mars_region import CODE, RIGHT_OFFSET, build_mars_map
    from cmb.template import load_mni

    mask = nib.load(preprocessed["mask"])
    m = np.asanyarray(mask.dataobj) > 0
    truth = np.asanyarray(reorient_to_ras(nib.load(subject["brain"])).dataobj) > 0
    assert (m & truth).sum() / truth.sum() >= 0.98
    assert (m & ~truth).sum() / m.sum() <= 0.10  # the mask does not leak into skull and scalp
    # region-wise: every cortical lobe and the cerebellum are kept (MARS label at each voxel's true MNI position)
    mars = build_mars_map(load_mni(2))
    ijk = np.argwhere(truth)
    mni = truth_to_mni(nib.load(subject["to_mni"]), _world(mask.affine, ijk))
    vox = np.rint(np.linalg.inv(mars.affine) @ np.c_[mni, np.ones(len(mni))].T)[:3].astype(int)
    vox = np.clip(vox.T, 0, np.array(mars.labels.shape) - 1).T
    region = mars.labels[tuple(vox)] % RIGHT_OFFSET
    kept = m[tuple(ijk.T)]
    for name in ("frontal", "parietal", "temporal", "occipital", "cerebellum"):
        sel = region == CODE[name]
        assert sel.sum() > 100, name
        assert kept[sel].mean() >= 0.98, (name, kept[sel].mean())


def test_n4_removes_a_known_bias(subject):
    img = reorient_to_ras(nib.load(subject["mag"]))
    data = img.get_fdata(dtype=np.float32)
    truth = np.asanyarray(reorient_to_ras(nib.load(subject["brain"])).dataobj) > 0
    world = _world(img.affine, np.argwhere(np.ones(data.shape, bool))).reshape(data.shape + (3,))
    log_bias = 0.004 * world[..., 0] - 0.003 * world[..., 1] + 0.00004 * world[..., 2] ** 2
    biased = nib.Nifti1Image((data * np.exp(log_bias)).astype(np.float32), img.affine)
    ref, _ = n4_bias_correct(img, spacing_mm=4.0, iterations=(50, 50))
    out, field = n4_bias_correct(biased, spacing_mm=4.0, iterations=(50, 50))
    residual = np.log(np.asanyarray(out.dataobj)[truth] / np.asanyarray(ref.dataobj)[truth])
    assert residual.std() < 0.3 * log_bias[truth].std()
    assert field.shape == data.shape and field.dtype == np.float32


def test_highpass_phase_removes_background_and_follows_the_convention():
    shape, zooms = (48, 48, 24), (1.0, 1.0, 2.0)
    ijk = np.indices(shape).astype(np.float32)
    background = 0.4 * ijk[0] - 0.25 * ijk[1] + 0.6 * ijk[2]  # wraps many times
    r2 = (ijk[0] - 24) ** 2 + (ijk[1] - 20) ** 2 + ((ijk[2] - 12) * 2) ** 2
    source = 1.2 * np.exp(-r2 / (2 * 1.5**2))
    far = (slice(10, 16), slice(32, 38), slice(9, 14))  # > 3 sigma from the source and the edges
    for convention, sign in (("positive", 1.0), ("negative", -1.0)):
        wrapped = np.angle(np.exp(1j * (background + sign * source)))
        hp = highpass_phase(wrapped, None, zooms, sigma_mm=3.0, paramagnetic_phase=convention)
        assert hp[24, 20, 12] > 0.8  # paramagnetic always comes out positive
        assert np.abs(hp[far]).max() < 0.05  # the smooth background is gone
    with pytest.raises(ValueError, match="paramagnetic_phase"):
        highpass_phase(wrapped, None, zooms, paramagnetic_phase="up")


def test_highpass_phase_sign_flips_with_the_convention_on_real_phase(subject):
    ph = reorient_to_ras(nib.load(subject["phase"]))
    mag = reorient_to_ras(nib.load(subject["mag"]))
    zooms = ph.header.get_zooms()[:3]
    pos = highpass_phase(ph.get_fdata(dtype=np.float32), mag.get_fdata(dtype=np.float32), zooms)
    neg = highpass_phase(
        ph.get_fdata(dtype=np.float32),
        mag.get_fdata(dtype=np.float32),
        zooms,
        paramagnetic_phase="negative",
    )
    not_pi = np.abs(pos) < 3.1
    np.testing.assert_allclose(neg[not_pi], -pos[not_pi], atol=1e-5)


def test_phase_output_is_masked_and_records_its_convention(preprocessed):
    hp = np.asanyarray(nib.load(preprocessed["phase"]).dataobj)
    mask = np.asanyarray(nib.load(preprocessed["mask"]).dataobj) > 0
    assert hp.dtype == np.float32 and np.all(hp[~mask] == 0) and np.abs(hp).max() <= np.pi + 1e-6
    assert hp[mask].std() > 0.01
    side = json.loads(Path(str(preprocessed["phase"]).replace(".nii.gz", ".json")).read_text())
    assert side["InputParamagneticPhase"] == "negative" and side["ParamagneticPhase"] == "positive"
    report = json.loads(preprocessed["report"].read_text())
    assert report["phase"]["InputParamagneticPhase"] == "negative"
    assert report["brain_mask"]["brain_ml"] > 1000 and report["normalization"]["scale"] > 0


def test_phase_on_another_grid_is_rejected_before_any_work(subject, tmp_path):
    ph = nib.load(subject["phase"])
    bad = tmp_path / "phase_bad.nii.gz"
    nib.save(nib.Nifti1Image(ph.get_fdata(dtype=np.float32)[:-2], ph.affine), bad)
    with pytest.raises(ValueError, match="phase_bad"):
        preprocess_subject(
            subject["mag"],
            bad,
            tmp_path / "m.nii.gz",
            tmp_path / "k.nii.gz",
            tmp_path / "p.nii.gz",
            paramagnetic_phase="positive",
        )
    assert not (tmp_path / "m.nii.gz").exists()


def test_brain_mask_falls_back_to_intensity_when_the_template_disagrees(subject, preprocessed):
    from cmb.brain_mask import compute_brain_mask

    img = nib.load(preprocessed["mag"])  # bias-corrected already
    truth = np.asanyarray(reorient_to_ras(nib.load(subject["brain"])).dataobj) > 0
    mask, info = compute_brain_mask(
        img, work_mm=2.0, grow_mm=6.0, min_agreement=1.01
    )  # no registration can pass this
    assert info["template_prior_used"] is False and info["template_rough_dice"] > 0.8
    assert (mask & truth).sum() / truth.sum() >= 0.95 and (mask & ~truth).sum() / mask.sum() <= 0.15
