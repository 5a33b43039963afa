"""The paramagnetic phase sign: estimated on a scan's veins, and the rule that decides between it and the vendor."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from cmb.echo_combine import combine_echoes
from cmb.failures import InputDataError
from cmb.phase_convention import (
    MISMATCH_FLAG,
    UNCONFIDENT_FLAG,
    PhaseSignEstimate,
    estimate_paramagnetic_phase,
    resolve_paramagnetic_phase,
)
from cmb.phase_units import rescale_phase
from cmb.preprocess import highpass_phase, reorient_to_ras
from cmb.synth import SynthOptions, synthesize

TRUTH = "derivatives/cmb-truth"


def _scan(root):
    """Magnitude (brain median 1), unflipped high-pass phase, brain mask, affine and the true sign."""
    mag = reorient_to_ras(nib.load(next(root.glob("sub-01/*/*part-mag*.nii.gz"))))
    ph = reorient_to_ras(nib.load(next(root.glob("sub-01/*/*part-phase*.nii.gz"))))
    mask = (
        np.asanyarray(
            reorient_to_ras(nib.load(next(root.glob(f"{TRUTH}/sub-01/*/*brain_mask*")))).dataobj
        )
        > 0
    )
    m = mag.get_fdata(dtype=np.float32)
    zooms = np.sqrt((mag.affine[:3, :3] ** 2).sum(0))
    hp = highpass_phase(
        ph.get_fdata(dtype=np.float32), m, zooms, mask=mask
    )  # "positive": not flipped
    truth = json.loads(next(root.glob(f"{TRUTH}/sub-01/*/*_synth.json")).read_text())[
        "paramagnetic_phase"
    ]
    return m / np.median(m[mask]), hp, mask, mag.affine, truth


@pytest.fixture(scope="module", params=["positive", "negative"])
def synthetic(request, tmp_path_factory):
    """A small synthetic scan with veins at every orientation, its phase stored with a known sign."""
    root = tmp_path_factory.mktemp(f"phase_sign_{request.param}")
    synthesize(
        SynthOptions(
            out=root,
            n_subjects=1,
            seed=1,
            preset="tiny",
            vein_model="randomized",
            n_cmb=2,
            paramagnetic_phase=request.param,
        ),
        log=lambda m: None,
    )
    return _scan(root)


def test_sign_of_a_synthetic_scan_is_found_confidently(synthetic):
    mag, hp, mask, affine, truth = synthetic
    est = estimate_paramagnetic_phase(mag, hp, mask, affine)
    assert est.paramagnetic_phase == truth
    assert est.confident and abs(est.z) >= 3.0 and est.n_veins >= 3 and est.n_placements >= 100


def test_negated_phase_gives_the_opposite_sign(synthetic):
    mag, hp, mask, affine, truth = synthetic
    est, flipped = (estimate_paramagnetic_phase(mag, p, mask, affine) for p in (hp, -hp))
    assert flipped.paramagnetic_phase != est.paramagnetic_phase
    assert flipped.paramagnetic_phase == {"positive": "negative", "negative": "positive"}[truth]
    assert flipped.confident and flipped.z == pytest.approx(-est.z)


def test_phase_unrelated_to_the_veins_is_not_confident(synthetic):
    """The random-placement null: the same veins scored on a phase rolled away from them."""
    mag, hp, mask, affine, _ = synthetic
    rolled = np.roll(hp, [n // 3 for n in hp.shape], axis=(0, 1, 2)) * mask
    est = estimate_paramagnetic_phase(mag, rolled, mask, affine)
    assert not est.confident and abs(est.z) < 3.0


def test_scan_without_veins_is_not_confident():
    g = np.indices((40, 40, 30)).astype(float)
    mask = (((g - [[[[20]]], [[[20]]], [[[15]]]]) / 15) ** 2).sum(0) < 1
    mag = np.random.default_rng(0).normal(1.0, 0.02, mask.shape).astype(np.float32)
    est = estimate_paramagnetic_phase(
        mag, np.zeros(mask.shape, np.float32), mask, np.diag([2.0, 2.0, 2.0, 1.0])
    )
    assert (
        est.paramagnetic_phase is None
        and not est.confident
        and "no dark tubular structure" in est.note
    )


def test_real_crop_estimate_agrees_with_the_orientation_of_its_veins(real_megre):
    """On the real 3-echo crop (0.47 x 0.47 x 1 mm, no sidecar, so no vendor), the phase inside a
    vein has the sign of dchi (3 cos^2 theta - 1): veins within 35 deg of B0 and veins across it
    (over 70 deg) must show opposite interior signs, the near-B0 one being the paramagnetic sign.
    The estimate (which does not use the interior phase) must agree."""
    combo = combine_echoes(
        real_megre["mag"], real_megre["phase"], echo_times=[0.004, 0.008, 0.012], min_fov_mm=None
    )
    mag = combo.magnitude.get_fdata(dtype=np.float32)
    zooms = np.asarray(combo.magnitude.header.get_zooms()[:3], float)
    mask = np.zeros(mag.shape, bool)
    rim = np.ceil(1.5 / zooms).astype(int)
    mask[tuple(slice(r, n - r) for r, n in zip(rim, mag.shape))] = True
    phase, _ = rescale_phase(combo.phase.get_fdata(dtype=np.float32))
    hp = highpass_phase(phase, mag, zooms, mask=mask)
    est = estimate_paramagnetic_phase(mag / np.median(mag[mask]), hp, mask, combo.magnitude.affine)
    angle, interior = np.asarray(est.vein_angle_b0_deg), np.asarray(est.vein_interior_rad)
    along, across = interior[angle < 35], interior[angle > 70]
    assert len(along) and len(across)
    assert np.all(np.sign(along) == np.sign(along[0])) and np.all(
        np.sign(across) == -np.sign(along[0])
    )
    assert est.confident and est.paramagnetic_phase == ("positive" if along[0] > 0 else "negative")
    assert (
        estimate_paramagnetic_phase(mag, -hp, mask, combo.magnitude.affine).paramagnetic_phase
        != est.paramagnetic_phase
    )


# --------------------------------------------------------------------------- the decision


def _estimate(sign, confident=True, z=None):
    z = (6.0 if sign == "positive" else -6.0) if z is None else z
    return PhaseSignEstimate(
        sign,
        z,
        confident,
        0.9,
        12 if confident else 2,
        400,
        200,
        0.0,
        3.0,
        "test estimate",
        "sub-01_phase.nii.gz",
    )


@pytest.mark.parametrize(
    "manufacturer, vendor_sign", [("SIEMENS", "negative"), ("GE MEDICAL SYSTEMS", "positive")]
)
def test_agreeing_estimate_confirms_the_vendor(manufacturer, vendor_sign):
    d = resolve_paramagnetic_phase("auto", manufacturer, "r.json", _estimate(vendor_sign))
    assert (d.paramagnetic_phase, d.source, d.agreement, d.flags) == (
        vendor_sign,
        "vendor",
        "agree",
        (),
    )


@pytest.mark.parametrize(
    "manufacturer, data_sign", [("Philips Medical Systems", "positive"), ("GE", "negative")]
)
def test_confident_disagreeing_estimate_wins_with_the_mismatch_flag(manufacturer, data_sign):
    d = resolve_paramagnetic_phase("auto", manufacturer, "r.json", _estimate(data_sign))
    assert (d.paramagnetic_phase, d.source, d.agreement) == (data_sign, "data", "disagree")
    assert d.flags == (MISMATCH_FLAG,) and d.mismatch and "following the data" in d.warnings[0]
    assert d.to_dict()["mismatch"] is True and d.to_dict()["estimate"]["z"] == pytest.approx(
        _estimate(data_sign).z
    )


def test_unconfident_estimate_keeps_the_vendor_rule_with_a_flag():
    d = resolve_paramagnetic_phase(
        "auto", "SIEMENS", "r.json", _estimate("positive", confident=False, z=1.2)
    )
    assert (d.paramagnetic_phase, d.source, d.agreement, d.flags) == (
        "negative",
        "vendor",
        "unconfident",
        (UNCONFIDENT_FLAG,),
    )


@pytest.mark.parametrize("manufacturer", [None, "", "Canon Medical Systems", "UIH"])
def test_without_a_known_vendor_a_confident_estimate_decides_with_a_warning(manufacturer):
    d = resolve_paramagnetic_phase("auto", manufacturer, "r.json", _estimate("negative"))
    assert (d.paramagnetic_phase, d.source, d.agreement) == ("negative", "data", "no_vendor_rule")
    assert d.warnings and "taken from the veins" in d.warnings[0] and d.flags == ()


def test_without_a_vendor_and_without_confident_data_the_refusal_names_file_reason_and_setting():
    with pytest.raises(
        InputDataError,
        match=r"^sub-01_ingested\.json: Manufacturer 'Canon' has no known phase sign, "
        r"and the veins of sub-01_phase\.nii\.gz do not tell it either \(test "
        r"estimate\).*set preprocess\.paramagnetic_phase to positive or negative",
    ):
        resolve_paramagnetic_phase(
            "auto", "Canon", "sub-01_ingested.json", _estimate("positive", False, 1.0)
        )


def test_explicit_setting_overrides_both_and_flags_a_confident_disagreement():
    d = resolve_paramagnetic_phase("negative", "GE", "r.json", _estimate("positive"))
    assert (d.paramagnetic_phase, d.source, d.agreement, d.flags) == (
        "negative",
        "configuration",
        "disagree",
        (MISMATCH_FLAG,),
    )
    assert "the setting is kept" in d.warnings[0]
    quiet = resolve_paramagnetic_phase(
        "positive", None, "r.json", _estimate("positive", confident=False, z=0.5)
    )
    assert (quiet.paramagnetic_phase, quiet.flags, quiet.agreement) == (
        "positive",
        (),
        "unconfident",
    )
