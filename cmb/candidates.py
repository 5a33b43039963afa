"""Candidate microbleeds: a fast classical dark-blob screen and connected-component extraction.

The screen is the first, high-sensitivity step of detection: it keeps every
place that is darker than its surroundings at the scale of a microbleed, so that
the networks only look at a small part of the brain.
"""

from __future__ import annotations

import cc3d
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

__all__ = ["dark_blob_response", "screen_candidates", "find_peaks", "delineate_candidates", "extract_candidates"]


def _masked_gaussian(img: np.ndarray, mask: np.ndarray, sigma_vox) -> np.ndarray:
    """Gaussian mean of ``img`` over ``mask`` only (normalized convolution), so the brain edge does not bleed in."""
    w = ndi.gaussian_filter(mask.astype(np.float32), sigma_vox, mode="constant")
    s = ndi.gaussian_filter(np.where(mask, img, 0).astype(np.float32), sigma_vox, mode="constant")
    return s / np.maximum(w, 1e-3)


def dark_blob_response(mag: np.ndarray, mask: np.ndarray, spacing, radii_mm=(1.0, 1.75, 3.0)) -> tuple[np.ndarray, np.ndarray]:
    """Relative darkness of blobs of each radius: ``(background - blob) / background``, best over radii.

    Parameters
    ----------
    mag : (X, Y, Z) ndarray
        Magnitude, bias-corrected.
    mask : (X, Y, Z) ndarray of bool
        Brain mask; outside it the response is 0.
    spacing : sequence of 3 float
        Voxel size in mm (anisotropic grids are handled in mm).
    radii_mm : sequence of float
        Blob radii to look for (apparent CMB diameters of 2-6 mm by default).

    Returns
    -------
    response : (X, Y, Z) ndarray of float32
        0 where nothing is darker than its surroundings; about 0.5 for a blob at half the local intensity.
    best_radius : (X, Y, Z) ndarray of float32
        The radius (mm) giving the response.

    Examples
    --------
    >>> img = np.ones((30, 30, 30), np.float32)
    >>> img[13:17, 13:17, 13:17] = 0.3
    >>> r, _ = dark_blob_response(img, np.ones(img.shape, bool), (1, 1, 1))
    >>> bool(r[15, 15, 15] > 0.4 and r[5, 5, 5] < 0.01)
    True
    """
    spacing = np.asarray(spacing, float)
    mask = mask.astype(bool)
    response = np.zeros(mag.shape, np.float32)
    best = np.zeros(mag.shape, np.float32)
    for r in radii_mm:
        blob = _masked_gaussian(mag, mask, (r / 2.0) / spacing)
        background = _masked_gaussian(mag, mask, (3.0 * r) / spacing)
        resp = (background - blob) / np.maximum(background, 1e-6)
        better = resp > response
        response[better] = resp[better]
        best[better] = r
    response[~mask] = 0
    np.clip(response, 0, None, out=response)
    return response, best


def screen_candidates(mag: np.ndarray, mask: np.ndarray, spacing, threshold: float = 0.08,
                      min_distance_mm: float = 2.5, radii_mm=(1.0, 1.75, 3.0), max_candidates: int = 5000) -> pd.DataFrame:
    """Local maxima of :func:`dark_blob_response` above ``threshold``, strongest first.

    Returns a table with columns ``i, j, k`` (voxel), ``score`` and ``radius_mm``;
    maxima closer than ``min_distance_mm`` to a stronger one are suppressed.

    Examples
    --------
    >>> img = np.ones((40, 40, 20), np.float32)
    >>> img[9:12, 9:12, 9:11] = 0.2; img[29:32, 29:32, 9:11] = 0.4
    >>> c = screen_candidates(img, np.ones(img.shape, bool), (1, 1, 2))
    >>> c[["i", "j"]].values.tolist()
    [[10, 10], [30, 30]]
    """
    response, radius = dark_blob_response(mag, mask, spacing, radii_mm)
    return find_peaks(response, radius, spacing, threshold, min_distance_mm, max_candidates)


def find_peaks(response: np.ndarray, radius: np.ndarray, spacing, threshold: float = 0.08,
               min_distance_mm: float = 2.5, max_candidates: int = 5000) -> pd.DataFrame:
    """Local maxima of a darkness ``response`` (:func:`dark_blob_response`); see :func:`screen_candidates`."""
    spacing = np.asarray(spacing, float)
    size = np.maximum(np.round(2 * min_distance_mm / spacing).astype(int) | 1, 1)
    peaks = (response == ndi.maximum_filter(response, size=tuple(size))) & (response >= threshold)
    # A plateau of equal maxima is one candidate: keep its first voxel.
    labels, n = cc3d.connected_components(peaks, connectivity=26, return_N=True)
    if n == 0:
        return pd.DataFrame({"i": [], "j": [], "k": [], "score": [], "radius_mm": []})
    ijk = np.array(ndi.maximum_position(response, labels, np.arange(1, n + 1)), dtype=int).reshape(-1, 3)
    scores = response[tuple(ijk.T)]
    order = np.argsort(-scores, kind="stable")[:max_candidates]
    ijk, scores = ijk[order], scores[order]
    return pd.DataFrame({
        "i": ijk[:, 0], "j": ijk[:, 1], "k": ijk[:, 2], "score": scores.astype(float),
        "radius_mm": radius[tuple(ijk.T)].astype(float),
    })


def delineate_candidates(response: np.ndarray, peaks: pd.DataFrame, spacing, phase: np.ndarray | None = None,
                         level: float = 0.5) -> tuple[np.ndarray, pd.DataFrame]:
    """Each candidate's blob, its size, shape and phase.

    The blob of a peak is its watershed basin of the darkness ``response``, cut at
    ``level`` times the peak's response (the half-maximum extent by default).

    Parameters
    ----------
    response : (X, Y, Z) ndarray
        :func:`dark_blob_response`.
    peaks : DataFrame
        :func:`screen_candidates` (``i, j, k, score``), one row per candidate.
    spacing : sequence of 3 float
        Voxel size (mm).
    phase : (X, Y, Z) ndarray, optional
        High-pass phase (radians, paramagnetic positive).
    level : float
        Fraction of the peak response that bounds the blob.

    Returns
    -------
    labels : (X, Y, Z) ndarray of int32
        Candidate ``n`` (row ``n - 1`` of ``peaks``) is labelled ``n``.
    table : DataFrame
        ``peaks`` plus ``volume_mm3``, ``diameter_mm``, ``sphericity`` (square root of
        the smallest over the largest second moment: 1 for a ball, near 0 for a
        tube) and ``phase_mean`` (NaN without phase).

    Examples
    --------
    >>> img = np.ones((40, 40, 40), np.float32)
    >>> img[10:14, 10:14, 10:14] = 0.2      # a ball-like blob
    >>> img[25:27, 20:36, 25:27] = 0.2      # a tube
    >>> mask = np.ones(img.shape, bool)
    >>> resp, _ = dark_blob_response(img, mask, (1, 1, 1))
    >>> peaks = screen_candidates(img, mask, (1, 1, 1), threshold=0.2)
    >>> labels, table = delineate_candidates(resp, peaks, (1, 1, 1))
    >>> bool(table["sphericity"].iloc[0] > 0.8 > table["sphericity"].iloc[-1])
    True
    """
    from skimage.segmentation import watershed

    spacing = np.asarray(spacing, float)
    n = len(peaks)
    table = peaks.reset_index(drop=True).copy()
    if n == 0:
        for col in ("volume_mm3", "diameter_mm", "sphericity", "phase_mean"):
            table[col] = pd.Series(dtype=float)
        return np.zeros(response.shape, np.int32), table
    ijk = table[["i", "j", "k"]].to_numpy(int)
    scores = response[tuple(ijk.T)].astype(np.float32)
    floor = float(level * scores.min())
    # Watershed only inside a padded box around the candidates: most of the volume is far from all of them.
    lo = np.maximum(ijk.min(0) - 12, 0)
    hi = np.minimum(ijk.max(0) + 13, response.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    resp = response[box]
    markers = np.zeros(resp.shape, np.int32)
    markers[tuple((ijk - lo).T)] = np.arange(1, n + 1, dtype=np.int32)
    basins = watershed(-resp, markers, mask=resp >= floor)
    cut = np.concatenate([[np.inf], level * scores]).astype(np.float32)
    basins[resp < cut[basins]] = 0
    labels = np.zeros(response.shape, np.int32)
    labels[box] = basins

    idx = np.arange(1, n + 1)
    count = ndi.sum_labels(np.ones(basins.shape, np.float32), basins, idx)
    voxel_mm3 = float(np.prod(spacing))
    table["volume_mm3"] = count * voxel_mm3
    table["diameter_mm"] = np.cbrt(6.0 * table["volume_mm3"].to_numpy() / np.pi)
    table["sphericity"] = _sphericity(basins, idx, spacing)
    if phase is None:
        table["phase_mean"] = np.nan
    else:
        table["phase_mean"] = ndi.mean(phase[box].astype(np.float32), basins, idx)
    return labels, table


def _sphericity(labels: np.ndarray, idx: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """sqrt(smallest / largest eigenvalue) of each label's coordinate covariance (mm), voxel extent included."""
    coords = np.nonzero(labels)
    lab = labels[coords]
    xyz = np.stack(coords, 1).astype(np.float64) * spacing
    n = np.bincount(lab, minlength=idx.max() + 1)[idx].astype(float)
    mean = np.stack([np.bincount(lab, xyz[:, a], idx.max() + 1)[idx] for a in range(3)], 1) / n[:, None]
    cov = np.zeros((len(idx), 3, 3))
    for a in range(3):
        for b in range(a, 3):
            m = np.bincount(lab, xyz[:, a] * xyz[:, b], idx.max() + 1)[idx] / n - mean[:, a] * mean[:, b]
            cov[:, a, b] = cov[:, b, a] = m
    cov += np.diag(spacing ** 2 / 12.0)  # a single voxel is a box, not a point
    ev = np.linalg.eigvalsh(cov)
    return np.sqrt(np.clip(ev[:, 0], 0, None) / np.maximum(ev[:, -1], 1e-12))


def extract_candidates(prob: np.ndarray, threshold: float = 0.5, voxel_size=(1.0, 1.0, 1.0),
                       max_diameter_mm: float = 10.0) -> tuple[np.ndarray, int]:
    """Label connected CMB candidates of a likelihood map and drop oversized ones.

    Parameters
    ----------
    prob : (X, Y, Z) ndarray of float
        Voxelwise CMB likelihood in [0, 1].
    threshold : float, optional
        Foreground is ``prob >= threshold``.
    voxel_size : sequence of 3 float, optional
        Spacing in mm.
    max_diameter_mm : float, optional
        Larger components (sphere-equivalent) are removed.

    Returns
    -------
    labels : (X, Y, Z) ndarray of int32
        0 is background; 1..n are kept candidates.
    n : int
        Number of kept candidates.

    Examples
    --------
    >>> prob = np.zeros((8, 8, 8))
    >>> prob[2, 2, 2] = prob[6, 6, 6] = 0.9
    >>> extract_candidates(prob)[1]
    2
    """
    labels, n = cc3d.connected_components(prob >= threshold, connectivity=26, return_N=True)
    volume = np.bincount(labels.ravel(), minlength=n + 1)[1:] * np.prod(voxel_size)
    keep = np.flatnonzero(np.cbrt(6 * volume / np.pi) <= max_diameter_mm) + 1
    lut = np.zeros(n + 1, dtype=np.int32)
    lut[keep] = np.arange(1, keep.size + 1)
    return lut[labels], int(keep.size)
