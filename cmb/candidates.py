"""Candidate microbleeds: a fast classical dark-blob screen and connected-component extraction.

The screen is the first, high-sensitivity step of detection: it keeps every
place that is darker than its surroundings at the scale of a microbleed, so that
the networks only look at a small part of the brain.

The screen is written once, in PyTorch (float32), and runs on the CPU or a CUDA
device. Its two heavy primitives, the separable Gaussian and the maximum filter,
call scipy.ndimage on the CPU (the fastest there) and explicit sums of shifted
copies / max pooling on CUDA, where no convolution library (cuDNN, TF32) decides
the rounding. Both give the same numbers to float rounding. Inputs and outputs are
NumPy arrays; ``device`` only says where the work happens.
"""

from __future__ import annotations

import cc3d
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

__all__ = [
    "dark_blob_response",
    "inner_mask",
    "screen_candidates",
    "find_peaks",
    "delineate_candidates",
    "screen_bytes",
]

_TRUNCATE = 3.0


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """scipy.ndimage's Gaussian weights for ``truncate=3``: radius ``int(3 sigma + 0.5)``, summing to 1."""
    radius = int(_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=float)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _gaussian(x: torch.Tensor, sigma) -> torch.Tensor:
    """Separable Gaussian of a 3D tensor, zero outside (scipy's ``mode="constant"``)."""
    if x.device.type == "cpu":
        out = ndi.gaussian_filter(
            x.numpy(), np.asarray(sigma, float), mode="constant", truncate=_TRUNCATE
        )
        return torch.from_numpy(out)
    return _shifted_gaussian(x, sigma)


def _shifted_gaussian(x: torch.Tensor, sigma) -> torch.Tensor:
    """:func:`_gaussian` as weighted sums of shifted copies (the CUDA path; any device)."""
    for axis, s in enumerate(sigma):
        w = _gaussian_kernel(float(s))
        r = len(w) // 2
        if r == 0:
            continue
        pad = [0, 0] * 3
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r  # F.pad lists the last axis first
        xp = F.pad(x, pad)
        n = x.shape[axis]
        out = torch.zeros_like(x)
        for k, wk in enumerate(w):
            out.add_(xp.narrow(axis, k, n), alpha=float(wk))
        x = out
    return x


def _block_mean(a: torch.Tensor, f) -> torch.Tensor:
    """Mean over blocks of ``f`` voxels per axis (the last partial block padded by edge values)."""
    f = tuple(int(k) for k in f)
    pad = [(-n) % k for n, k in zip(a.shape, f)]
    a = a[None, None]
    if any(pad):
        a = F.pad(a, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
    return F.avg_pool3d(a, f, stride=f)[0, 0]


def _upsample(small: torch.Tensor, f, shape, linear: bool = True) -> torch.Tensor:
    """Back from blocks of ``f`` voxels to the full grid ``shape``.

    Linear: each voxel interpolated between block centres (at ``(f - 1) / 2``), clamped
    at the edges. Otherwise: the value of the voxel's own block.
    """
    if linear:
        out = F.interpolate(
            small[None, None],
            scale_factor=tuple(float(k) for k in f),
            mode="trilinear",
            align_corners=False,
        )[0, 0]
    else:
        out = small
        for axis, k in enumerate(f):
            out = out.repeat_interleave(int(k), dim=axis)
    return out[: shape[0], : shape[1], : shape[2]]


def _masked_gaussian(img: torch.Tensor, mask: torch.Tensor, sigma_vox) -> torch.Tensor:
    """Gaussian mean of ``img`` over ``mask`` only (normalized convolution), so the brain edge does not bleed in.

    A wide kernel (several voxels) is applied to a block-averaged copy and the
    result interpolated back: the same smooth background for a fraction of the work.
    """
    sigma = np.asarray(sigma_vox, float)
    f = np.maximum(np.floor(sigma / 2.0).astype(int), 1)
    m = mask.float()
    x = torch.where(mask, img, 0.0)
    if (f == 1).all():
        return _gaussian(x, sigma) / _gaussian(m, sigma).clamp_min(1e-3)
    w = _gaussian(_block_mean(m, f), sigma / f)
    small = _gaussian(_block_mean(x, f), sigma / f) / w.clamp_min(1e-3)
    return _upsample(small, f, img.shape)


def _response(mag: torch.Tensor, mask: torch.Tensor, spacing: np.ndarray, radii_mm, work_mm: float):
    f = np.maximum(np.round(work_mm / spacing).astype(int), 1)
    if (f > 1).any():
        m_small = _block_mean(mask.float(), f)
        x_small = _block_mean(torch.where(mask, mag, 0.0), f) / m_small.clamp_min(1e-3)
        resp_small, best_small = _response(x_small, m_small >= 0.5, spacing * f, radii_mm, work_mm)
        response = _upsample(resp_small, f, mag.shape)
        return torch.where(mask, response, 0.0), _upsample(best_small, f, mag.shape, linear=False)
    response = torch.zeros_like(mag)
    best = torch.zeros_like(mag)
    for r in radii_mm:
        blob = _masked_gaussian(mag, mask, (r / 2.0) / spacing)
        background = _masked_gaussian(mag, mask, (3.0 * r) / spacing)
        resp = (background - blob) / background.clamp_min(1e-6)
        better = resp > response
        response = torch.where(better, resp, response)
        best = torch.where(better, torch.tensor(float(r), device=mag.device), best)
    return torch.where(mask, response, 0.0).clamp_min(0.0), best


def screen_bytes(shape) -> int:
    """Upper bound of the memory :func:`dark_blob_response` needs on its device (about 16 float32 copies)."""
    return 16 * 4 * int(np.prod(shape))


def dark_blob_response(
    mag: np.ndarray,
    mask: np.ndarray,
    spacing,
    radii_mm=(1.0, 1.75, 3.0),
    work_mm: float = 0.9,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
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
    work_mm : float
        Axes with much finer voxels are block-averaged towards this spacing first (a
        0.5 mm SWI is filtered at 1 mm, four times fewer voxels) and the response is
        interpolated back: CMBs are at least 2 mm across.
    device : torch device
        Where to filter (the CPU or a CUDA device; the results agree to float rounding).

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
    with torch.inference_mode():
        m = torch.as_tensor(np.asarray(mask, bool), device=device)
        x = torch.as_tensor(np.asarray(mag, np.float32), device=device)
        response, best = _response(x, m, np.asarray(spacing, float), radii_mm, work_mm)
        return response.cpu().numpy(), best.cpu().numpy()


def _maximum_filter(x: torch.Tensor, size, cval: float | None = None) -> torch.Tensor:
    """Maximum over a box of ``size`` voxels; outside the array counts as ``cval``, or is ignored when None."""
    size = [int(n) for n in size]
    if x.device.type == "cpu":
        mode = {"mode": "reflect"} if cval is None else {"mode": "constant", "cval": cval}
        return torch.from_numpy(ndi.maximum_filter(x.numpy(), size=size, **mode))
    return _pooled_maximum(x, size, cval)


def _pooled_maximum(x: torch.Tensor, size, cval: float | None = None) -> torch.Tensor:
    """:func:`_maximum_filter` as three 1D max poolings (the CUDA path; any device)."""
    pad = [v for n in reversed(size) for v in (n // 2, n // 2)]
    y = F.pad(x[None, None], pad, value=-np.inf if cval is None else cval)
    for axis, n in enumerate(size):
        kernel = [1, 1, 1]
        kernel[axis] = n
        y = F.max_pool3d(y, tuple(kernel), stride=1)
    return y[0, 0]


def inner_mask(
    mask: np.ndarray, spacing, min_edge_mm: float, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Voxels of ``mask`` more than ``min_edge_mm`` inside it along every axis (a box erosion; outside is not mask).

    >>> m = np.zeros((9, 9, 9), bool); m[1:8, 1:8, 1:8] = True
    >>> int(inner_mask(m, (1, 1, 1), 1.5).sum())  # 7^3 eroded by one voxel
    125
    """
    if min_edge_mm <= 0:
        return np.asarray(mask, bool)
    size = 2 * np.floor(min_edge_mm / np.asarray(spacing, float)).astype(int) + 1
    with torch.inference_mode():
        outside = (~torch.as_tensor(np.asarray(mask, bool), device=device)).float()
        return (_maximum_filter(outside, size, cval=1.0) == 0).cpu().numpy()


def screen_candidates(
    mag: np.ndarray,
    mask: np.ndarray,
    spacing,
    threshold: float = 0.08,
    min_distance_mm: float = 2.5,
    radii_mm=(1.0, 1.75, 3.0),
    max_candidates: int = 5000,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
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
    response, radius = dark_blob_response(mag, mask, spacing, radii_mm, device=device)
    return find_peaks(response, radius, spacing, threshold, min_distance_mm, max_candidates, device)


def find_peaks(
    response: np.ndarray,
    radius: np.ndarray,
    spacing,
    threshold: float = 0.08,
    min_distance_mm: float = 2.5,
    max_candidates: int = 5000,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """Local maxima of a darkness ``response`` (:func:`dark_blob_response`); see :func:`screen_candidates`."""
    spacing = np.asarray(spacing, float)
    size = np.maximum(np.round(2 * min_distance_mm / spacing).astype(int) | 1, 1)
    with torch.inference_mode():
        r = torch.as_tensor(np.asarray(response, np.float32), device=device)
        peaks = ((r == _maximum_filter(r, size)) & (r >= threshold)).cpu().numpy()
    # Touching maxima are one candidate, at their strongest voxel. They are a plateau of
    # equal values, or, where the window is one slice thick (thick slices), maxima of
    # neighbouring slices: there the strongest one is the blob's centre, not the first.
    labels, n = cc3d.connected_components(peaks, connectivity=26, return_N=True)
    if n == 0:
        return pd.DataFrame({"i": [], "j": [], "k": [], "score": [], "radius_mm": []})
    nz = np.flatnonzero(labels)  # peaks are sparse: never sort the whole volume
    lab = labels.ravel()[nz]
    order = np.lexsort(
        (-response.ravel()[nz], lab)
    )  # by label, strongest first, ties in raster order
    _, first = np.unique(lab[order], return_index=True)
    ijk = np.stack(np.unravel_index(nz[order[first]], labels.shape), 1).astype(int).reshape(-1, 3)
    scores = response[tuple(ijk.T)]
    order = np.argsort(-scores, kind="stable")[:max_candidates]
    ijk, scores = ijk[order], scores[order]
    return pd.DataFrame(
        {
            "i": ijk[:, 0],
            "j": ijk[:, 1],
            "k": ijk[:, 2],
            "score": scores.astype(float),
            "radius_mm": radius[tuple(ijk.T)].astype(float),
        }
    )


def delineate_candidates(
    response: np.ndarray,
    peaks: pd.DataFrame,
    spacing,
    phase: np.ndarray | None = None,
    level: float = 0.5,
    max_radius_mm: float = 6.0,
    extent_radii: float | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Each candidate's blob, its size, shape and phase.

    The blob of a peak is the connected region around it where the darkness
    ``response`` stays above ``level`` times the peak's (the half-maximum extent by
    default), within ``max_radius_mm``, and within ``extent_radii`` times the
    peak's screen radius when given. Candidates are processed strongest first and
    a voxel belongs to the first blob that reaches it.

    The radius bound matters for faint peaks next to dark structures (a vein, the
    dark deep nuclei at 3 T): half of a faint peak is a low level, and the blob
    would otherwise spread over the neighbour and look like it.

    Parameters
    ----------
    response : (X, Y, Z) ndarray
        :func:`dark_blob_response`.
    peaks : DataFrame
        :func:`screen_candidates` (``i, j, k, score``), one row per candidate, strongest first.
    spacing : sequence of 3 float
        Voxel size (mm).
    phase : (X, Y, Z) ndarray, optional
        High-pass phase (radians, paramagnetic positive).
    level : float
        Fraction of the peak response that bounds the blob.
    max_radius_mm : float
        Largest extent searched around a peak.
    extent_radii : float, optional
        Largest extent in units of the peak's ``radius_mm`` (the screen's best blob
        radius): an ellipsoid in mm, at least one voxel along each axis.

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
    >>> _, bounded = delineate_candidates(resp, peaks, (1, 1, 1), extent_radii=2.0)
    >>> bool(bounded["volume_mm3"].iloc[-1] < table["volume_mm3"].iloc[-1])
    True
    """
    spacing = np.asarray(spacing, float)
    table = peaks.reset_index(drop=True).copy()
    labels = np.zeros(response.shape, np.int32)
    n = len(table)
    volume = np.zeros(n)
    spher = np.zeros(n)
    phase_mean = np.full(n, np.nan)
    half = np.ceil(max_radius_mm / spacing).astype(int)
    shape = np.array(response.shape)
    ijk = table[["i", "j", "k"]].to_numpy(int).reshape(-1, 3)
    extent = (
        np.minimum(extent_radii * table["radius_mm"].to_numpy(float), max_radius_mm)
        if extent_radii is not None
        else np.full(n, np.inf)
    )
    for row, centre in enumerate(ijk):
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        crop = response[box]
        local = tuple(centre - lo)
        free = labels[box] == 0
        fg = (crop >= level * crop[local]) & free
        if np.isfinite(extent[row]):
            fg &= _within_ellipsoid(crop.shape, local, np.maximum(extent[row], spacing) / spacing)
        fg[local] = True
        cc = cc3d.connected_components(fg, connectivity=6)
        blob = cc == cc[local]
        labels[box][blob] = row + 1
        pts = np.argwhere(blob) * spacing
        volume[row] = len(pts)
        cov = np.cov(pts.T, bias=True) if len(pts) > 1 else np.zeros((3, 3))
        ev = np.linalg.eigvalsh(cov + np.diag(spacing**2 / 12.0))  # a voxel is a box, not a point
        spher[row] = np.sqrt(max(ev[0], 0.0) / max(ev[-1], 1e-12))
        if phase is not None:
            phase_mean[row] = float(phase[box][blob].mean())
    table["volume_mm3"] = volume * float(np.prod(spacing))
    table["diameter_mm"] = np.cbrt(6.0 * table["volume_mm3"].to_numpy() / np.pi)
    table["sphericity"] = spher
    table["phase_mean"] = phase_mean
    return labels, table


def _within_ellipsoid(shape, centre, semi_axes_vox) -> np.ndarray:
    """Voxels of a box of ``shape`` inside the ellipsoid around ``centre`` with the given semi-axes (voxels)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, semi_axes_vox))
    return d2 <= 1.0
