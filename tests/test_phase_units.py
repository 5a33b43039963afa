import nibabel as nib
import numpy as np
import pytest

from cmb.failures import InputDataError
from cmb.phase_units import detect_phase_units, phase_scaling, rescale_phase, wrap_to_pi

PI32 = np.float32(np.pi)
RNG = np.random.default_rng(42)
TRUE = RNG.uniform(-np.pi, np.pi, (20, 20, 10))  # ground-truth radians


def _in_range(rad):
    return rad.dtype == np.float32 and rad.min() >= -PI32 and rad.max() < PI32


def _circular_error(a, b):
    return np.abs(np.angle(np.exp(1j * (a.astype(float) - b))))


@pytest.mark.parametrize(
    "stored, units",
    [
        (TRUE, "radians"),
        (np.mod(TRUE, 2 * np.pi), "radians-0-2pi"),
        (np.degrees(TRUE), "degrees"),
        (np.mod(np.degrees(TRUE), 360), "degrees-0-360"),
        (1000 * TRUE, "milliradians"),
        (TRUE * 855.0**-1, "scaled"),
    ],
)
def test_float_units_detected_and_rescaled(stored, units):
    rad, how = rescale_phase(stored)
    assert detect_phase_units(stored).units == units
    assert _in_range(rad)
    assert _circular_error(rad, TRUE).max() < 2e-3
    assert how


@pytest.mark.parametrize(
    "lo, hi, expect",
    [
        (-4096, 4095, "x * pi / 4096"),
        (0, 4095, "(x - 2048) * pi / 2048"),
        (-2048, 2047, "x * pi / 2048"),
    ],
)
def test_raw_integer_ranges(lo, hi, expect):
    period = hi - lo + 1
    stored = (
        np.round((TRUE + np.pi) / (2 * np.pi) * period + lo - 0.5).clip(lo, hi).astype(np.int16)
    )
    rad, how = rescale_phase(stored)
    assert expect in how and _in_range(rad)
    # integer steps quantise: error within one step
    assert _circular_error(rad, TRUE).max() < 2 * np.pi / period * 1.01


def test_integer_min_and_max_map_to_ends_of_cycle():
    rad, _ = rescale_phase(np.array([-4096, -2048, 0, 4095], dtype=np.int16))
    np.testing.assert_allclose(rad, [-np.pi, -np.pi / 2, 0, np.pi - np.pi / 4096], atol=1e-6)


def test_percentiles_make_detection_robust_to_outliers():
    stored = np.degrees(TRUE).copy()
    stored.flat[:3] = 500.0  # three corrupt voxels far outside +-180
    scaling = detect_phase_units(stored)
    assert scaling.units == "degrees"
    assert "3 outlier voxel(s)" in scaling.description
    rad = scaling.apply(stored)
    assert _in_range(rad)
    assert _circular_error(rad.ravel()[3:], TRUE.ravel()[3:]).max() < 1e-5


def test_integer_outliers_do_not_change_the_bit_range():
    stored = np.round(TRUE / np.pi * 2048).clip(-2048, 2047).astype(np.int16)
    stored.flat[:2] = 32767
    rad, how = rescale_phase(stored)
    assert "x * pi / 2048" in how and "2 outlier" in how
    assert _circular_error(rad.ravel()[2:], TRUE.ravel()[2:]).max() < 2 * np.pi / 4096 * 1.01


def test_scaled_rule_uses_hard_max_unless_outliers():
    stored = TRUE / 855.0
    _, how = rescale_phase(stored)
    assert "855" in how
    stored = stored.copy()
    stored.flat[0] = 0.05  # one wild voxel must not shrink everything else
    rad2, _ = rescale_phase(stored)
    assert np.median(_circular_error(rad2, TRUE)) < 1e-2


def test_filtered_phase_bunched_near_zero_is_not_blown_up():
    bunched = RNG.normal(0, 0.0005, 20000)
    bunched[:5] = [-0.004, 0.004, -0.0039, 0.0041, 0.0]  # outliers making it look symmetric
    with pytest.raises(InputDataError, match="cannot tell"):
        detect_phase_units(bunched, "filtered.nii")


def test_real_fixture_phase_scaling(real_megre):
    data = nib.load(real_megre["phase"]).get_fdata()
    scaling = detect_phase_units(data, str(real_megre["phase"]))
    assert scaling.units == "scaled"
    assert scaling.scale == pytest.approx(855.0, rel=0.01)
    rad = scaling.apply(data[..., 2])
    assert _in_range(rad)
    assert rad.min() < -3.1 and rad.max() > 3.1  # the full cycle is used
    assert "0.00367" in scaling.description


@pytest.mark.parametrize(
    "values, match",
    [
        (np.full((5, 5, 5), 1.5), "constant"),
        (np.r_[np.zeros(10000), 1.0, 2.0], "nearly constant"),
        (np.full(3, np.nan), "no finite"),
    ],
)
def test_degenerate_phase_is_an_error_naming_the_file(values, match):
    with pytest.raises(InputDataError, match=match) as err:
        rescale_phase(values, name="/x/sub-01_part-phase_GRE.nii.gz")
    assert str(err.value).startswith("/x/sub-01_part-phase_GRE.nii.gz: ")


def test_asymmetric_unknown_range_is_an_error():
    with pytest.raises(InputDataError, match="set the phase units explicitly"):
        rescale_phase(RNG.uniform(0, 0.01, 1000), name="p.nii")


def test_forced_units_override_detection():
    stored = np.degrees(TRUE)
    rad, how = rescale_phase(stored, units="degrees")
    assert _circular_error(rad, TRUE).max() < 1e-5 and "set to degrees" in how
    rad, _ = rescale_phase(np.array([0, 1024, 2048, 4095]), units="integer")
    np.testing.assert_allclose(rad[:3], [-np.pi, -np.pi / 2, 0], atol=1e-6)
    with pytest.raises(ValueError):
        phase_scaling(stored, units="gradians")


def test_wrap_is_half_open_in_float32():
    x = np.array([np.pi, np.nextafter(np.pi, 0), -np.pi, 7.0, -7.0])
    w = wrap_to_pi(x)
    assert w.dtype == np.float32 and w.max() < PI32 and w.min() >= -PI32
    assert w[0] == -PI32


# --------------------------------------------------------------------------- GE phase, decided by the sidecar

GE_FILTERED = {
    "Manufacturer": "GE MEDICAL SYSTEMS",
    "ManufacturersModelName": "DISCOVERY MR750",
    "ImageType": ["DERIVED", "PRIMARY", "FILT_PHA"],
}


def _filtered_phase(seed=3):
    """A realistic SWI filtered phase in radians: tissue within about +-0.2 rad, veins to about -1 rad."""
    rng = np.random.default_rng(seed)
    rad = rng.normal(0.0, 0.08, (40, 40, 20))
    rad[5:35, 20, 10] = -0.95  # a vein
    rad[12, 8:30, 6] = 0.7
    return rad


def test_ge_filtered_phase_is_scaled_into_pi_by_the_sidecar():
    rad = _filtered_phase()
    stored = np.round(rad * 1000).astype(np.int16)  # GE: radians x 1000
    assert -1100 < stored.min() and stored.max() < 1100  # far from filling +-3142
    scaling = phase_scaling(stored, metadata=GE_FILTERED)
    assert scaling.units == "milliradians" and scaling.scale == pytest.approx(1e-3)
    out = scaling.apply(stored)
    assert _in_range(out) and np.abs(out - rad).max() <= 0.5e-3 + 1e-6
    assert "FILT_PHA" in scaling.description


def test_ge_filtered_phase_without_the_sidecar_is_refused_not_scaled_three_times_too_much():
    stored = np.round(_filtered_phase() * 1000).astype(np.int16)
    with pytest.raises(
        InputDataError,
        match=r"^sub-01_part-phase_swi.nii.gz: integer phase .* does not fill a stored "
        r"phase range.*would scale it 6\.14 times too much",
    ):  # 1000 pi / 512
        rescale_phase(stored, name="sub-01_part-phase_swi.nii.gz")


@pytest.mark.parametrize(
    "image_type", ["DERIVED\\PRIMARY\\FILT_PHA", ["ORIGINAL", "PRIMARY", "FILT_PHA"]]
)
def test_filt_pha_alone_decides_even_without_a_manufacturer(image_type):
    stored = np.round(_filtered_phase() * 1000).astype(np.int16)
    rad, how = rescale_phase(stored, metadata={"ImageType": image_type})
    assert "radians x 1000" in how and np.abs(rad).max() < 1.0


def test_ge_filtered_phase_outside_its_range_is_refused_with_the_reason():
    stored = np.round(RNG.uniform(-4096, 4095, 5000))
    with pytest.raises(
        InputDataError, match=r"FILT_PHA\) is stored as integer radians x 1000, within \+-3142"
    ):
        phase_scaling(stored, metadata=GE_FILTERED, name="p.nii")


def test_ge_raw_phase_and_other_vendors():
    ge_raw = np.round(TRUE * 1000)  # wrapped, fills +-3142
    for metadata in (
        None,
        {"Manufacturer": "GE MEDICAL SYSTEMS", "ImageType": ["ORIGINAL", "PRIMARY", "P"]},
    ):
        rad, _ = rescale_phase(ge_raw, metadata=metadata)
        assert _circular_error(rad, TRUE).max() < 1e-3
    siemens = np.round((TRUE + np.pi) / (2 * np.pi) * 4096).clip(0, 4095)
    assert (
        "(x - 2048) * pi / 2048"
        in phase_scaling(siemens, metadata={"Manufacturer": "Siemens"}).description
    )
    float_rad = phase_scaling(TRUE, metadata=GE_FILTERED)  # the sidecar decides integers only
    assert float_rad.units == "radians"


def test_integer_phase_that_does_not_fill_its_range_is_refused():
    partial = np.round(RNG.uniform(0, 2500, 5000))  # unsigned, not 0..4095
    with pytest.raises(
        InputDataError, match=r"does not fill a stored phase range \(the nearest, 0\.\.4095"
    ):
        rescale_phase(partial, name="p.nii")
