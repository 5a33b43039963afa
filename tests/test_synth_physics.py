"""Physics of the simulator on hand-built sources: blooming, phase sign, vein shape."""

from types import SimpleNamespace

import numpy as np
import pytest

from cmb.synth.physics import Source, field_from_chi, homodyne_phase, rad_per_ppm, simulate_sources
from cmb.synth.scan import _cmb_truth

SHAPE = (48, 48, 16)
AFFINE = np.diag([0.5, 0.5, 2.0, 1.0])
AFFINE[:3, 3] = -np.array(SHAPE) / 2 * np.diag(AFFINE)[:3]
CENTRE = np.zeros((1, 3))


def _factor(src, te=0.02, b0=3.0, affine=AFFINE):
    (eff,) = simulate_sources([src], affine, SHAPE, b0, [te])
    out = np.ones(SHAPE, dtype=np.complex64)
    out[eff.slices] = eff.factors[0]
    return out


def _cmb(chi=1.0, radius=0.8):
    return Source("cmb", CENTRE, radius_mm=radius, chi_ppm=chi, pd_scale=0.8, r2s_extra=100.0)


def _dark_voxels(f, level=0.8):
    return int((np.abs(f) < level).sum())


def test_cmb_centre_darker_than_surroundings():
    f = np.abs(_factor(_cmb()))
    c = tuple(np.array(SHAPE) // 2)
    ring = np.concatenate(
        [f[c[0] - 8 : c[0] + 9, c[1] - 8, c[2]], f[c[0] - 8 : c[0] + 9, c[1] + 8, c[2]]]
    )
    assert f[c] < 0.5 * ring.mean()


@pytest.mark.parametrize("param", ["te", "b0"])
def test_blooming_grows_with_echo_time_and_field(param):
    sizes = []
    for v in (1.0, 2.0, 4.0):
        kw = {"te": 0.015 * v} if param == "te" else {"b0": 1.5 * v}
        sizes.append(_dark_voxels(_factor(_cmb(), **kw)))
    assert sizes[0] < sizes[1] < sizes[2]


def test_calcification_phase_opposite_to_cmb():
    cmb = np.angle(_factor(_cmb(chi=0.8)))
    calc = np.angle(
        _factor(Source("calcification", CENTRE, radius_mm=0.8, chi_ppm=-0.8, pd_scale=0.3))
    )
    c = np.array(SHAPE) // 2
    # Along B0 (z) a paramagnetic source raises the field, across it lowers it.
    assert cmb[c[0], c[1], c[2] + 1] > 0.1 and calc[c[0], c[1], c[2] + 1] < -0.1
    assert cmb[c[0] + 3, c[1], c[2]] < 0 < calc[c[0] + 3, c[1], c[2]]
    near = np.abs(cmb) > 0.05
    assert np.corrcoef(cmb[near], calc[near])[0, 1] < -0.95


def test_vein_dark_region_is_elongated():
    path = np.array([[-8.0, -4.0, 0.0], [0.0, 0.0, 0.0], [8.0, 4.0, 0.0]])
    f = _factor(
        Source("vein", path, radius_mm=0.5, chi_ppm=0.4, pd_scale=0.9, r2s_extra=30.0), te=0.03
    )
    idx = np.argwhere(np.abs(f) < 0.8)
    mm = idx * np.diag(AFFINE)[:3]
    evals = np.sort(np.linalg.eigvalsh(np.cov(mm.T)))[::-1]
    assert len(idx) > 10 and np.sqrt(evals[0] / evals[1]) > 3


def test_cmb_round_not_elongated_in_plane():
    f = _factor(_cmb(radius=1.0), te=0.03)
    c = np.array(SHAPE) // 2
    idx = np.argwhere(np.abs(f[:, :, c[2]]) < 0.8) * 0.5
    evals = np.sort(np.linalg.eigvalsh(np.cov(idx.T)))[::-1]
    assert np.sqrt(evals[0] / evals[1]) < 1.5


def test_field_is_linear_in_susceptibility_and_b0_direction_matters():
    chi = np.zeros((24, 24, 24), np.float32)
    chi[12, 12, 12] = 1.0
    f1 = field_from_chi(chi, (1, 1, 1), (0, 0, 1))
    f2 = field_from_chi(2 * chi, (1, 1, 1), (0, 0, 1))
    fx = field_from_chi(chi, (1, 1, 1), (1, 0, 0))
    np.testing.assert_allclose(f2, 2 * f1, rtol=1e-4, atol=1e-7)
    assert f1[12, 12, 15] > 0 and fx[12, 12, 15] < 0 and fx[15, 12, 12] > 0


def test_oblique_grid_keeps_dipole_along_scanner_z():
    # Rotating the grid 90 degrees about x moves scanner z onto the grid's y axis.
    rot = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]) @ np.diag(
        [0.5, 0.5, 0.5, 1]
    )
    shape = (32, 32, 32)
    rot[:3, 3] = -rot[:3, :3] @ (np.array(shape) / 2)
    (eff,) = simulate_sources([_cmb()], rot, shape, 3.0, [0.02])
    ph = np.zeros(shape, np.float32)
    ph[eff.slices] = np.angle(eff.factors[0])
    c = np.array(shape) // 2
    assert ph[c[0], c[1] + 4, c[2]] > 0.05 > ph[c[0], c[1], c[2] + 4]


def test_homodyne_removes_smooth_phase_keeps_local():
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    smooth = np.broadcast_to(3.0 * x[:, None, None], (64, 64, 16))
    local = np.zeros((64, 64, 16), np.float32)
    local[32, 32, 8] = 1.0
    hp = homodyne_phase(np.exp(1j * (smooth + local)), (1, 1, 1), fwhm_mm=8)
    assert abs(hp[10, 10, 8]) < 0.05 and hp[32, 32, 8] > 0.8


def test_rad_per_ppm_scales_with_te_and_field():
    assert rad_per_ppm(3.0, 0.04) == pytest.approx(2 * rad_per_ppm(3.0, 0.02))
    assert rad_per_ppm(1.5, 0.02) == pytest.approx(0.5 * rad_per_ppm(3.0, 0.02))


def test_cmb_too_faint_for_a_thick_slice_is_left_out_of_the_truth():
    thick = np.diag([1.0, 1.0, 5.0, 1.0])
    thick[:3, 3] = -np.array(SHAPE) / 2 * np.diag(thick)[:3]
    big = Source("cmb", CENTRE, radius_mm=0.9, chi_ppm=1.5, pd_scale=0.8, r2s_extra=100.0, label=1)
    tiny = Source(
        "cmb",
        CENTRE + [0.0, 12.0, 0.0],
        radius_mm=0.3,
        chi_ppm=0.6,
        pd_scale=0.8,
        r2s_extra=100.0,
        label=2,
    )
    effects = simulate_sources([big, tiny], thick, SHAPE, 1.5, [0.025])
    assert np.abs(effects[1].factors[0]).min() > 0.8 > np.abs(effects[0].factors[0]).min()
    lesions = [SimpleNamespace(source=s) for s in (big, tiny)]
    labels, diameters, subvisible = _cmb_truth(lesions, effects, SHAPE, np.diag(thick)[:3], 0)
    assert subvisible == {2} and set(np.unique(labels)) == {0, 1} and set(diameters) == {1}
