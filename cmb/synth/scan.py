"""Simulate one gradient-echo scan of a synthetic subject.

The tissue maps of the MNI head model are sampled into the oblique acquisition
grid through the subject warp and head pose (with sub-slice sampling for partial
volume across thick slices). The susceptibility map gives the field by k-space
dipole convolution; the complex signal per echo is
``PD exp(-TE R2*) x dephasing x bias x exp(i (gamma dB TE + phi0))``; small
sources are added on fine grids (:func:`cmb.synth.physics.simulate_sources`);
complex Gaussian noise makes the magnitude Rician.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from cmb.synth.anatomy import HeadModel
from cmb.synth.geometry import SubjectWarp, acquisition_affine
from cmb.synth.lesions import Lesion
from cmb.synth.physics import (
    b0_in_index_frame,
    dephasing_attenuation,
    field_from_chi,
    rad_per_ppm,
    simulate_sources,
)
from cmb.synth.presets import Acquisition

__all__ = ["ScanResult", "simulate_scan", "simulate_t1w", "t1w_parcellation", "sample_model"]

_COARSE = 4  # the warp is evaluated every 4 voxels and interpolated (it is smooth)
FOV_CENTRE_MNI = (0.0, -20.0, 6.0)  # centre of the brain's extent, cerebellum included


@dataclass
class ScanResult:
    affine: np.ndarray
    magnitude: list[np.ndarray]  # per echo, float32
    phase: list[np.ndarray]  # per echo, float32 radians, wrapped
    cmb_labels: np.ndarray  # int16, one label per CMB
    brain_mask: np.ndarray  # bool
    cmb_apparent_diameter: dict[int, float] = field(default_factory=dict)
    reference_echo: int = 0
    cmb_subvisible: set[int] = field(
        default_factory=set
    )  # labels of CMBs too faint to see (not in cmb_labels)


def _positions(n: int, n_s: int) -> np.ndarray:
    return np.linspace(0.0, n - 1.0, n_s)


def sample_model(
    maps_zyx: torch.Tensor,
    model: HeadModel,
    warp: SubjectWarp,
    pose: np.ndarray,
    affine: np.ndarray,
    sample_shape,
    full_shape,
    slice_offsets=(0.0,),
    mode: str = "bilinear",
) -> torch.Tensor:
    """Sample model maps at the grid points of a (possibly coarser) acquisition grid.

    ``maps_zyx`` is ``(1, C, Z, Y, X)`` (:func:`cmb.synth.anatomy.parameter_maps`);
    the result is ``(1, C, k, j, i)``: transposed, it is the column-major
    ``(i, j, k)`` volume that NIfTI writers store without a copy.

    The sampled grid spans the full grid corner to corner (``align_corners``
    semantics), so it can be upsampled exactly with trilinear interpolation.
    Values are averaged over ``slice_offsets`` (fractions of a voxel along the
    third axis) to model partial volume in thick slices. ``mode="nearest"`` samples
    label maps.
    """
    inv_pose = np.linalg.inv(pose)
    model_shape = np.array(model.shape, float)
    acc = None
    for off in slice_offsets:
        coarse = [max(2, int(np.ceil((n - 1) / _COARSE)) + 1) for n in sample_shape]
        pos = [_positions(n, c) for n, c in zip(full_shape, coarse)]
        pos[2] = pos[2] + off
        ijk = np.stack(np.meshgrid(*pos, indexing="ij"), -1).reshape(-1, 3)
        world = ijk @ affine[:3, :3].T + affine[:3, 3]
        x_s = world @ inv_pose[:3, :3].T + inv_pose[:3, 3]
        mi = model.mni_to_index(warp.to_mni(x_s))
        # ``maps_zyx`` is (Z, Y, X), so grid_sample's (x, y, z) grid order is the model's (i, j, k);
        # the output is laid out (k, j, i), i.e. column-major (i, j, k) like a NIfTI volume.
        norm = 2.0 * mi / (model_shape - 1.0) - 1.0
        grid = (
            torch.from_numpy(norm.astype(np.float32)).reshape(1, *coarse, 3).permute(0, 4, 3, 2, 1)
        )
        grid = F.interpolate(
            grid, size=tuple(sample_shape)[::-1], mode="trilinear", align_corners=True
        )
        grid = grid.permute(0, 2, 3, 4, 1).contiguous()
        out = F.grid_sample(maps_zyx, grid, mode=mode, padding_mode="zeros", align_corners=True)
        acc = out if acc is None else acc.add_(out)
        del grid, out
    return acc / len(slice_offsets)


@functools.lru_cache(maxsize=2)
def _filled_dk(model: HeadModel) -> np.ndarray:
    dk = np.asarray(model.dk)
    gap = (dk == 0) & ((model.gm + model.wm) > 0.5)
    if not gap.any():
        return dk
    _, idx = ndi.distance_transform_edt(dk == 0, return_indices=True)
    return np.where(gap, dk[tuple(idx)], dk)


@functools.lru_cache(maxsize=2)
def _brain_probability_zyx(model: HeadModel) -> np.ndarray:
    return np.ascontiguousarray((model.gm + model.wm + model.csf).T)[None]


def _upsample(x: torch.Tensor, shape) -> torch.Tensor:
    if tuple(x.shape[-3:]) == tuple(shape):
        return x
    return F.interpolate(x, size=tuple(shape), mode="trilinear", align_corners=True)


def _smooth_field(shape, rng: np.random.Generator, scale: float, order: int = 2) -> np.ndarray:
    """A smooth random polynomial field over the grid, in [-1, 1]-normalized coordinates."""
    coarse = [min(n, 24) for n in shape]
    small = _polynomial_field(coarse, rng, scale, order)
    return _upsample(torch.from_numpy(small)[None, None], shape)[0, 0].numpy()


def _polynomial_field(shape, rng, scale, order):
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    out = np.zeros(shape, dtype=np.float32)
    for i in range(order + 1):
        for j in range(order + 1 - i):
            for k in range(order + 1 - i - j):
                if i + j + k:
                    out += np.float32(rng.normal(scale=scale)) * x**i * y**j * z**k
    return out


def _texture(
    shape, rng: np.random.Generator, amplitude: float = 0.04, sigma_vox: float = 1.0
) -> np.ndarray:
    """Fine multiplicative tissue texture (real scans are not piecewise smooth)."""
    t = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox)
    t *= np.float32(amplitude / max(float(t.std()), 1e-6))
    t += 1.0
    return t


def _sampling_shape(acq: Acquisition, full_shape) -> tuple[int, int, int]:
    """Grid on which the model is sampled: no finer than the model's own resolution in-plane.

    Details finer than the model come from the fine-grid sources, the texture and the noise.

    >>> from cmb.synth.presets import PRESETS
    >>> _sampling_shape(PRESETS["swi-3t"], (512, 448, 72)), _sampling_shape(PRESETS["gre-3t"], (288, 256, 58))
    ((257, 225, 72), (288, 256, 58))
    """
    factors = [
        max(1, int(np.floor(acq.model_step / v + 1e-6))) if a < 2 else 1
        for a, v in enumerate(acq.voxel_mm)
    ]
    return tuple(int(np.ceil((n - 1) / f)) + 1 for n, f in zip(full_shape, factors))


def simulate_scan(
    model: HeadModel,
    maps: np.ndarray,
    warp: SubjectWarp,
    pose: np.ndarray,
    acq: Acquisition,
    lesions: list[Lesion],
    rng: np.random.Generator,
    paramagnetic_phase: str = "positive",
    storage: str = "RAS",
) -> ScanResult:
    """Simulate the magnitude and phase of every echo, with the CMB truth mask.

    ``maps`` is the (PD, R2*, chi) stack from :func:`cmb.synth.anatomy.parameter_maps`.
    """
    shape = tuple(acq.matrix)
    head_centre = pose[:3, :3] @ warp.from_mni(np.array([FOV_CENTRE_MNI]))[0] + pose[:3, 3]
    affine = acquisition_affine(rng, acq.voxel_mm, shape, storage=storage, centre=head_centre)
    zooms = np.array(acq.voxel_mm, float)

    s_shape = _sampling_shape(acq, shape)
    n_sub = int(np.clip(np.round(zooms[2] / model.step), 1, 3))
    offsets = ((np.arange(n_sub) + 0.5) / n_sub - 0.5).tolist()
    stack = torch.from_numpy(np.concatenate([maps, _brain_probability_zyx(model)], 0))[None]
    sampled = sample_model(stack, model, warp, pose, affine, s_shape, shape, offsets)[0]
    del stack

    # Everything below is stored (k, j, i) C-order, i.e. (i, j, k) column-major:
    # spacings and axis-wise quantities are reversed accordingly.
    kji = shape[::-1]
    s_spacing = zooms * (np.array(shape) - 1) / np.maximum(np.array(s_shape) - 1, 1)
    b0_dir = b0_in_index_frame(affine)
    fld = field_from_chi(sampled[2].numpy(), s_spacing[::-1], b0_dir[::-1])
    ratio = (zooms / s_spacing)[::-1]  # acquired voxel size in sampled-voxel units

    pd, r2s, brain_s = sampled[0].numpy(), sampled[1].numpy(), sampled[3]
    del sampled
    # Smooth factors (bias, receiver phase, background field) are combined at the
    # sampling resolution and upsampled once per echo, as amplitude and phase.
    s_kji = pd.shape
    bias = np.exp(_smooth_field(s_kji, rng, acq.bias_scale)) * _texture(s_kji, rng)
    phi0 = _smooth_field(s_kji, rng, 0.6, order=1) + np.float32(rng.uniform(-np.pi, np.pi))
    brain = None

    sources = [
        les.source.__class__(
            **{**les.source.__dict__, "points": _to_scanner(les.source.points, pose)}
        )
        for les in lesions
    ]
    effects = simulate_sources(sources, affine, shape, acq.b0, list(acq.tes))

    wm_level = 0.72 * np.exp(-acq.tes[0] * 21.0 * (0.35 + 0.65 * acq.b0 / 3.0))
    sigma = np.float32(wm_level / acq.snr)
    ref = int(np.argmin(np.abs(np.array(acq.tes) - 0.020)))
    mags, phases = [], []
    for e, te in enumerate(acq.tes):
        rpp = rad_per_ppm(acq.b0, te)
        amp = pd * np.exp(-te * r2s) * dephasing_attenuation(fld, rpp, ratio) * bias
        phase = np.float32(rpp) * fld + phi0
        channels = [torch.from_numpy(amp), torch.from_numpy(phase)] + (
            [brain_s] if brain is None else []
        )
        up = _upsample(torch.stack(channels)[None], kji)[0].numpy()
        if brain is None:
            brain = up[2] > 0.5
        sig = np.exp(1j * up[1])
        sig *= up[0]
        del up
        sig_ijk = sig.T
        for eff in effects:
            if eff is not None:
                sig_ijk[eff.slices] *= eff.factors[e]
        sig.real += sigma * rng.standard_normal(kji, dtype=np.float32)
        sig.imag += sigma * rng.standard_normal(kji, dtype=np.float32)
        if paramagnetic_phase == "negative":
            np.conjugate(sig, out=sig)
        mags.append(np.abs(sig).T)
        phases.append(np.angle(sig).T)
        del sig, sig_ijk

    labels, diameters, subvisible = _cmb_truth(lesions, effects, shape, zooms, ref)
    return ScanResult(
        affine=affine,
        magnitude=mags,
        phase=phases,
        cmb_labels=labels,
        brain_mask=brain.T,
        cmb_apparent_diameter=diameters,
        reference_echo=ref,
        cmb_subvisible=subvisible,
    )


def _to_scanner(points_s: np.ndarray, pose: np.ndarray) -> np.ndarray:
    return points_s @ pose[:3, :3].T + pose[:3, 3]


def _cmb_truth(lesions, effects, shape, zooms, ref, darkening: float = 0.8):
    """Label each CMB's apparent extent: voxels darkened below ``darkening`` x, connected to its centre.

    A CMB that darkens no voxel that much (a small one diluted in a thick slice) is
    not visible on this scan, so a rater would not mark it: it gets no label and is
    returned among the sub-visible ones instead.
    """
    labels = np.zeros(tuple(shape)[::-1], dtype=np.int16).T  # column-major, like the images
    diameters, subvisible = {}, set()
    for les, eff in zip(lesions, effects):
        if les.source.kind != "cmb" or eff is None:
            continue
        dark = (np.abs(eff.factors[ref]) < darkening) | (eff.occupancy > 0.3)
        if not dark.any():
            subvisible.add(les.source.label)
            continue
        comp, _ = ndi.label(dark)
        centre = np.unravel_index(np.argmax(eff.occupancy), eff.occupancy.shape)
        keep = comp == comp[centre] if comp[centre] else np.zeros_like(dark)
        keep[centre] = True
        region = labels[eff.slices]
        region[keep & (region == 0)] = les.source.label
        vol = keep.sum() * np.prod(zooms)
        diameters[les.source.label] = float(np.cbrt(6 * vol / np.pi))
    return labels, diameters, subvisible


def simulate_t1w(
    model: HeadModel,
    t1_map: np.ndarray,
    warp: SubjectWarp,
    pose: np.ndarray,
    rng: np.random.Generator,
    voxel_mm: float = 1.0,
    matrix=(176, 216, 176),
) -> tuple[np.ndarray, np.ndarray]:
    """A T1-weighted image of the same head pose on a 1 mm grid: ``(data, affine)``."""
    head_centre = pose[:3, :3] @ warp.from_mni(np.array([FOV_CENTRE_MNI]))[0] + pose[:3, 3]
    affine = acquisition_affine(
        rng, (voxel_mm,) * 3, matrix, max_tilt_deg=5.0, max_oblique_deg=3.0, centre=head_centre
    )
    kji = tuple(matrix)[::-1]
    data = sample_model(torch.from_numpy(t1_map)[None], model, warp, pose, affine, matrix, matrix)[
        0, 0
    ].numpy()
    data = data * np.exp(_smooth_field(kji, rng, 0.08))
    noise = 0.02 * (
        rng.standard_normal(kji, dtype=np.float32) + 1j * rng.standard_normal(kji, dtype=np.float32)
    )
    return np.abs(data + noise).astype(np.float32).T, affine


def t1w_parcellation(
    model: HeadModel,
    warp: SubjectWarp,
    pose: np.ndarray,
    affine: np.ndarray,
    matrix=(176, 216, 176),
) -> np.ndarray:
    """The head model's Desikan-Killiany aparc+aseg labels on a T1w grid: the parcellation a FreeSurfer run on
    that T1w would aim at (the true anatomy the subject was drawn from), as ``(i, j, k)`` int32.

    The packaged atlas leaves some tissue unlabelled (its thin cortex, the vermis), where the simulator still
    renders grey and white matter; FreeSurfer labels every such voxel, so they take the nearest label here.
    """
    labels = torch.from_numpy(np.ascontiguousarray(_filled_dk(model).T).astype(np.float32))[
        None, None
    ]
    out = sample_model(labels, model, warp, pose, affine, matrix, matrix, mode="nearest")[
        0, 0
    ].numpy()
    return np.rint(out).astype(np.int32).T
