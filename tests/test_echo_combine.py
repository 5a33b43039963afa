import nibabel as nib
import numpy as np
import pytest

from cmb.echo_combine import choose_phase_echo, combine_echoes, load_echoes, rms_combine
from cmb.failures import InputDataError

SHAPE = (40, 40, 30)


def _echoes(seed=0, n=3):
    rng = np.random.default_rng(seed)
    # signal decays with echo time, as in a real multi-echo GRE
    base = rng.uniform(50, 100, SHAPE)
    return np.stack([base * np.exp(-k * 0.3) for k in range(n)], axis=-1)


def test_rms_values():
    np.testing.assert_allclose(
        rms_combine(np.array([[1.0, 1.0, 1.0], [3.0, 4.0, 0.0]])), [1.0, np.sqrt(25 / 3)], rtol=1e-6
    )
    np.testing.assert_allclose(rms_combine(np.array([[1.0, 3.0]]), "mean"), [2.0])
    with pytest.raises(ValueError):
        rms_combine(np.ones((2, 2)), "max")


def test_rms_does_not_overflow_float32():
    big = np.full((2, 3), 3e20, dtype=np.float32)
    out = rms_combine(big)
    assert np.isfinite(out).all() and out[0] == pytest.approx(3e20, rel=1e-6)


def test_list_of_3d_files_equals_one_4d_file(make_nifti, tmp_path):
    mags = _echoes()
    files = [
        make_nifti(tmp_path / f"sub-01_echo-{e + 1}_part-mag_MEGRE.nii.gz", data=mags[..., e])
        for e in range(3)
    ]
    four_d = make_nifti(tmp_path / "sub-01_part-mag_MEGRE.nii.gz", data=mags)
    a = combine_echoes(files)
    b = combine_echoes(four_d)
    np.testing.assert_allclose(a.magnitude.get_fdata(), b.magnitude.get_fdata(), rtol=1e-6)
    np.testing.assert_allclose(a.magnitude.get_fdata(), np.sqrt((mags**2).mean(-1)), rtol=1e-5)
    assert a.magnitude.shape == SHAPE and a.magnitude.get_data_dtype() == np.float32
    np.testing.assert_array_equal(a.magnitude.affine, nib.load(files[0]).affine)
    assert "3 magnitude echoes combined by rms" in a.messages


def test_phase_echo_is_selected_not_combined(make_nifti, tmp_path):
    mags = _echoes()
    phases = np.random.default_rng(1).uniform(-np.pi, np.pi, SHAPE + (3,))
    mag = make_nifti(tmp_path / "mag.nii.gz", data=mags)
    ph = make_nifti(tmp_path / "phase.nii.gz", data=phases)
    res = combine_echoes(mag, ph, echo_times=[0.005, 0.015, 0.030])
    assert res.phase_echo == 2  # 15 ms is closest to 20 ms
    np.testing.assert_allclose(res.phase.get_fdata(), phases[..., 1], rtol=1e-6)
    assert res.phase_all_echoes.shape == SHAPE + (3,)
    res = combine_echoes(mag, ph, phase_echo=1)
    np.testing.assert_allclose(res.phase.get_fdata(), phases[..., 0], rtol=1e-6)


def test_echo_grids_must_match(make_nifti, tmp_path):
    mags = _echoes()
    e1 = make_nifti(tmp_path / "echo-1.nii.gz", data=mags[..., 0])
    e2 = make_nifti(tmp_path / "echo-2.nii.gz", data=mags[..., 1], zooms=(2.0, 2.0, 2.6))
    with pytest.raises(InputDataError, match=r"echo-2.nii.gz: grid differs from .*echo-1.nii.gz"):
        combine_echoes([e1, e2])


def test_phase_grid_and_echo_count_must_match(make_nifti, tmp_path):
    mag = make_nifti(tmp_path / "mag.nii.gz", data=_echoes())
    ph2 = make_nifti(tmp_path / "phase2.nii.gz", kind="phase", shape=SHAPE + (2,))
    with pytest.raises(InputDataError, match="phase2.nii.gz: grid differs"):
        combine_echoes(mag, ph2)
    ph_moved = make_nifti(
        tmp_path / "phase_moved.nii.gz",
        kind="phase",
        shape=SHAPE + (3,),
        affine=np.diag([2.0, 2.0, 2.5, 1.0]),
    )
    with pytest.raises(InputDataError, match="phase_moved.nii.gz: grid differs .* affines"):
        combine_echoes(mag, ph_moved)


def test_4d_refused_when_single_echo_expected(make_nifti, tmp_path):
    mag = make_nifti(tmp_path / "swi.nii.gz", data=_echoes())
    with pytest.raises(InputDataError, match="4D image with 3 volumes"):
        load_echoes(mag, allow_4d=False)
    assert load_echoes(mag).n_echoes == 3


def test_choose_phase_echo():
    assert choose_phase_echo(3, [0.004, 0.008, 0.012])[0] == 3
    assert choose_phase_echo(4, [0.005, 0.019, 0.025, 0.040])[0] == 2
    assert choose_phase_echo(4)[0] == 4
    assert choose_phase_echo(4, [0.005, None, 0.02, 0.03])[0] == 4  # incomplete TEs: unknown
    assert choose_phase_echo(4, phase_echo=-2)[0] == 3
    assert "as configured" in choose_phase_echo(4, phase_echo=1)[1]
    with pytest.raises(InputDataError, match="ingest.phase_echo is 5 but the phase has 4 echo"):
        choose_phase_echo(4, phase_echo=5)
    with pytest.raises(InputDataError):
        choose_phase_echo(4, phase_echo=0)


def test_real_fixture_rms_is_finite_and_between_echoes(real_megre):
    res = combine_echoes(real_megre["mag"], real_megre["phase"], min_fov_mm=None)
    mag = res.magnitude.get_fdata()
    raw = nib.load(real_megre["mag"]).get_fdata()
    assert mag.shape == (51, 51, 41) and np.isfinite(mag).all() and mag.max() > 0
    # RMS lies between the smallest and the largest echo, voxel by voxel
    assert np.all(mag >= raw.min(-1) * (1 - 1e-5)) and np.all(mag <= raw.max(-1) * (1 + 1e-5))
    assert res.phase_echo == 3  # TEs unknown: the last echo
    np.testing.assert_allclose(
        res.phase.get_fdata(), nib.load(real_megre["phase"]).get_fdata()[..., 2], rtol=1e-6
    )
