import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from cmb.candidates import (
    _pooled_maximum,
    _shifted_gaussian,
    dark_blob_response,
    find_peaks,
    screen_candidates,
)
from cmb.synth.physics import Source, simulate_sources


def ball(center, r, shape=(40, 40, 40)):
    d2 = sum((g - c) ** 2 for g, c in zip(np.indices(shape), center))
    return (d2 <= r**2).astype(float)


def test_empty_map():
    assert screen_candidates(
        np.ones((20, 20, 10), np.float32), np.ones((20, 20, 10), bool), (1, 1, 2)
    ).empty


def test_screen_finds_simulated_microbleed_in_noise():
    shape = (64, 64, 20)
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    (eff,) = simulate_sources(
        [Source("cmb", np.array([[16.0, 16.0, 20.0]]), 0.6, 1.2, 0.8, 100.0)],
        affine,
        shape,
        3.0,
        [0.02],
    )
    sig = np.ones(shape, np.complex64)
    sig[eff.slices] *= eff.factors[0]
    rng = np.random.default_rng(0)
    mag = np.abs(
        sig + 0.03 * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
    ).astype(np.float32)
    found = screen_candidates(mag, np.ones(shape, bool), (0.5, 0.5, 2.0), threshold=0.15)
    top = found.iloc[0]
    assert abs(top.i - 32) <= 1 and abs(top.j - 32) <= 1 and abs(top.k - 10) <= 1
    assert len(found) < 5


def test_response_ignores_the_mask_edge():
    img = np.ones((30, 30, 30), np.float32)
    mask = np.zeros(img.shape, bool)
    mask[5:25, 5:25, 5:25] = True
    img[~mask] = 0  # dark outside the brain must not make the border look like a blob
    r, _ = dark_blob_response(img, mask, (1, 1, 1))
    assert r.max() < 0.01


def test_touching_maxima_of_thick_slices_are_one_candidate_at_the_strongest():
    # With 5 mm slices the 2.5 mm suppression window is one slice thick, so a CMB and a
    # faint maximum in the next slice are both maxima, and they touch diagonally.
    response = np.zeros((20, 20, 8), np.float32)
    response[9, 9, 3] = 0.2  # first in raster order
    response[10, 10, 4] = 0.6
    found = find_peaks(response, np.ones_like(response), (1.0, 1.0, 5.0), threshold=0.1)
    assert len(found) == 1
    assert found[["i", "j", "k"]].iloc[0].tolist() == [10, 10, 4] and found["score"].iloc[
        0
    ] == np.float32(0.6)


@pytest.mark.parametrize("sigma", [(0.8, 1.3, 0.4), (2.5, 2.5, 1.0)])
def test_the_cuda_gaussian_is_scipys(sigma):
    """The CUDA path's Gaussian (shifted sums), run here on the CPU, against scipy.ndimage."""
    x = np.random.default_rng(0).random((23, 19, 11), dtype=np.float32)
    ref = ndi.gaussian_filter(x, sigma, mode="constant", truncate=3.0)
    np.testing.assert_allclose(
        _shifted_gaussian(torch.from_numpy(x), sigma).numpy(), ref, atol=1e-6
    )


@pytest.mark.parametrize("cval", [None, 1.0])
def test_the_cuda_maximum_filter_is_scipys(cval):
    x = np.random.default_rng(1).random((23, 19, 11), dtype=np.float32)
    mode = {"mode": "reflect"} if cval is None else {"mode": "constant", "cval": cval}
    ref = ndi.maximum_filter(x, size=(5, 3, 1), **mode)
    np.testing.assert_array_equal(
        _pooled_maximum(torch.from_numpy(x), (5, 3, 1), cval).numpy(), ref
    )
