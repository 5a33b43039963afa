"""Forward model of the cross-simulator: tissue, field and coils to magnitude and phase.

Deliberately different from ``cmb synth`` at every step that could teach a detector a
simulator's habits:

- **field**: analytic, per source (:mod:`cmb.crosssim.fields`): spheres for microbleeds,
  calcifications, iron-rich nuclei and air cavities (+9 to +9.4 ppm), tapered cylinder
  segments for veins, plus a random polynomial (orders 1-3); no k-space convolution;
- **signal**: ``PD exp(-TE R2*) exp(i gamma dB TE)`` averaged over random sub-voxel
  positions (stratified and jittered in the footprint of the anisotropic voxel). Near a
  source (within its reach) 16-24 points per voxel sample tissue, blood, hemosiderin
  and the exact field; elsewhere a few points along the slice sample the tissue (partial
  volume), and the background field enters through its value at the voxel centre and
  the voxel average of its linear part, the product of ``sinc(gamma TE G_i d_i / 2)``
  over the three axes, with the analytic gradient ``G``;
- **contrast**: a table of proton density and R2* at 1.5 T and 3 T per tissue
  (:class:`Contrast`; R2* interpolated linearly in B0), jittered per subject;
- **receive chain**: 4-16 coils with smooth random complex sensitivities, complex
  Gaussian noise per coil, root-sum-of-squares magnitude (non-central chi noise, and a
  bias field that is the RSS of the sensitivities), and the phase of the
  sensitivity-weighted coil combination (a virtual body-coil reference, so the phase is
  the field's), wrapped to (-pi, pi].

Scanner z is B0, slices are axial and the grid is aligned with the scanner axes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from cmb.crosssim.fields import (
    cylinder_field,
    cylinder_reach,
    n_polynomial_terms,
    polynomial_field,
    polynomial_gradient,
    rad_per_ppm,
    sphere_field,
    sphere_field_gradient,
    sphere_reach,
)
from cmb.crosssim.geometry import CLASSES, PARENCHYMA, Head
from cmb.crosssim.sources import segment_distance

__all__ = [
    "Preset",
    "PRESETS",
    "Acquisition",
    "draw_acquisition",
    "Contrast",
    "ScanResult",
    "simulate_scan",
    "BRAIN_CLASSES",
]

_C = {name: i for i, name in enumerate(CLASSES)}
#: Classes inside the brain mask of the truth (parenchyma, CSF, ventricles).
BRAIN_CLASSES = (*PARENCHYMA, _C["csf"], _C["ventricle"])


@dataclass(frozen=True)
class Preset:
    name: str
    voxel_mm: tuple[float, float, float]
    fov_mm: tuple[float, float, float]  # x (LR), y (AP), z (slab)
    b0: float
    te_s: tuple[float, float]  # echo time drawn in this range
    tr_s: float
    flip_deg: float
    snr: tuple[float, float]  # white-matter SNR of the combined magnitude, drawn in this range
    coils: tuple[int, int]  # number of receive coils, drawn in this range
    datatype: str  # BIDS folder: anat or swi


PRESETS = {
    "gre-1.5t": Preset(
        "gre-1.5t",
        (0.9, 0.9, 4.0),
        (189.0, 225.0, 136.0),
        1.5,
        (0.025, 0.040),
        0.75,
        20.0,
        (22.0, 32.0),
        (4, 8),
        "anat",
    ),
    "gre-3t": Preset(
        "gre-3t",
        (0.7, 0.7, 3.0),
        (189.0, 224.0, 132.0),
        3.0,
        (0.015, 0.025),
        0.65,
        18.0,
        (24.0, 34.0),
        (8, 16),
        "anat",
    ),
    "swi-3t": Preset(
        "swi-3t",
        (0.6, 0.6, 2.0),
        (186.0, 222.0, 128.0),
        3.0,
        (0.018, 0.025),
        0.029,
        15.0,
        (16.0, 24.0),
        (12, 16),
        "swi",
    ),
    # coarse and quick, for tests and demonstrations
    "tiny": Preset(
        "tiny",
        (1.5, 1.5, 3.0),
        (189.0, 222.0, 132.0),
        3.0,
        (0.018, 0.025),
        0.65,
        18.0,
        (24.0, 30.0),
        (4, 6),
        "anat",
    ),
}


@dataclass(frozen=True)
class Acquisition:
    """One scan's acquisition, drawn from a preset."""

    preset: str
    voxel_mm: tuple[float, float, float]
    shape: tuple[int, int, int]
    b0: float
    te: float
    tr: float
    flip_deg: float
    snr: float
    n_coils: int
    storage: str  # RAS or LAS (x axis flipped in the stored array)
    grid_offset_mm: tuple[float, float, float]  # grid centre relative to the head centre
    datatype: str

    def affine(self, head_centre) -> np.ndarray:
        a = np.diag([*self.voxel_mm, 1.0])
        if self.storage == "LAS":
            a[0, 0] = -a[0, 0]
        centre = np.asarray(head_centre, float) + self.grid_offset_mm
        a[:3, 3] = centre - a[:3, :3] @ ((np.asarray(self.shape) - 1) / 2.0)
        return a


def draw_acquisition(preset: str, rng: np.random.Generator) -> Acquisition:
    """A scan of ``preset``: echo time, SNR, coil count, storage order and grid position drawn.

    >>> acq = draw_acquisition("gre-1.5t", np.random.default_rng(0))
    >>> acq.shape, acq.b0, 0.025 <= acq.te <= 0.040
    ((210, 250, 34), 1.5, True)
    """
    p = PRESETS[preset]
    shape = tuple(
        int(round(f / v / 2) * 2) if i < 2 else int(round(f / v))
        for i, (f, v) in enumerate(zip(p.fov_mm, p.voxel_mm))
    )
    return Acquisition(
        preset=p.name,
        voxel_mm=p.voxel_mm,
        shape=shape,
        b0=p.b0,
        te=round(float(rng.uniform(*p.te_s)), 4),
        tr=p.tr_s,
        flip_deg=p.flip_deg,
        snr=float(rng.uniform(*p.snr)),
        n_coils=int(rng.integers(p.coils[0], p.coils[1] + 1)),
        storage="LAS" if rng.random() < 0.5 else "RAS",
        grid_offset_mm=(
            float(rng.uniform(-4, 4)),
            float(rng.uniform(-4, 4)),
            float(rng.uniform(2.0, 8.0)),
        ),
        datatype=p.datatype,
    )


def _default_pd() -> dict:
    return {
        "air": 0.0,
        "scalp": 0.88,
        "skull": 0.04,
        "csf": 1.0,
        "ventricle": 1.0,
        "cortex": 0.83,
        "white_matter": 0.69,
        "caudate": 0.81,
        "putamen": 0.80,
        "pallidum": 0.75,
        "thalamus": 0.77,
        "red_nucleus": 0.75,
        "dentate": 0.77,
        "cerebellar_cortex": 0.85,
        "cerebellar_white_matter": 0.71,
        "brainstem": 0.73,
        "cavity": 0.0,
        "vein": 0.82,
        "cmb": 0.45,
        "calcification": 0.15,
    }


def _default_r2s_15() -> dict:  # 1/s at 1.5 T
    return {
        "air": 0.0,
        "scalp": 28.0,
        "skull": 200.0,
        "csf": 2.0,
        "ventricle": 2.0,
        "cortex": 11.5,
        "white_matter": 14.5,
        "caudate": 14.0,
        "putamen": 16.0,
        "pallidum": 22.0,
        "thalamus": 14.0,
        "red_nucleus": 20.0,
        "dentate": 18.0,
        "cerebellar_cortex": 12.0,
        "cerebellar_white_matter": 14.0,
        "brainstem": 14.5,
        "cavity": 0.0,
        "vein": 20.0,
        "cmb": 120.0,
        "calcification": 40.0,
    }


def _default_r2s_3() -> dict:  # 1/s at 3 T
    return {
        "air": 0.0,
        "scalp": 40.0,
        "skull": 400.0,
        "csf": 3.0,
        "ventricle": 3.0,
        "cortex": 16.5,
        "white_matter": 21.5,
        "caudate": 22.0,
        "putamen": 27.0,
        "pallidum": 42.0,
        "thalamus": 20.0,
        "red_nucleus": 35.0,
        "dentate": 32.0,
        "cerebellar_cortex": 17.0,
        "cerebellar_white_matter": 21.0,
        "brainstem": 21.0,
        "cavity": 0.0,
        "vein": 45.0,
        "cmb": 260.0,
        "calcification": 70.0,
    }


def _default_chi() -> dict:  # ppm relative to surrounding tissue, sphere-field sources
    return {
        "caudate": 0.05,
        "putamen": 0.06,
        "pallidum": 0.15,
        "thalamus": 0.01,
        "red_nucleus": 0.12,
        "dentate": 0.10,
    }


@dataclass(frozen=True)
class Contrast:
    """Proton density (CSF = 1), R2* at 1.5 T and at 3 T (1/s), and nucleus susceptibility (ppm)."""

    pd: dict = field(default_factory=_default_pd)
    r2s_15: dict = field(default_factory=_default_r2s_15)
    r2s_3: dict = field(default_factory=_default_r2s_3)
    chi: dict = field(default_factory=_default_chi)

    def jittered(self, rng: np.random.Generator) -> Contrast:
        """Per-subject values: PD by about 5 %, R2* by about 10 % (same factor at both fields)."""
        pd = {
            k: float(v * np.clip(1 + 0.05 * rng.standard_normal(), 0.8, 1.2))
            for k, v in self.pd.items()
        }
        pd["csf"] = pd["ventricle"] = 1.0
        f = {k: float(np.clip(1 + 0.10 * rng.standard_normal(), 0.7, 1.3)) for k in self.r2s_3}
        chi = {
            k: float(v * np.clip(1 + 0.2 * rng.standard_normal(), 0.5, 1.5))
            for k, v in self.chi.items()
        }
        return Contrast(
            pd,
            {k: v * f[k] for k, v in self.r2s_15.items()},
            {k: v * f[k] for k, v in self.r2s_3.items()},
            chi,
        )

    def tables(self, b0: float) -> tuple[np.ndarray, np.ndarray]:
        """PD and R2* at ``b0`` per class index (R2* linear in B0 through the two fields).

        >>> pd, r2 = Contrast().tables(2.25)
        >>> float(r2[CLASSES.index("white_matter")])
        18.0
        """
        pd = np.array([self.pd[c] for c in CLASSES], np.float32)
        lo = np.array([self.r2s_15[c] for c in CLASSES])
        hi = np.array([self.r2s_3[c] for c in CLASSES])
        r2 = np.maximum(lo + (hi - lo) * (b0 - 1.5) / 1.5, 0.5 * lo)
        return pd, r2.astype(np.float32)


@dataclass
class ScanResult:
    magnitude: np.ndarray  # float32, RSS of the coils
    phase: np.ndarray  # float32 rad in (-pi, pi], in the site's sign convention
    affine: np.ndarray
    cmb_labels: np.ndarray  # int16, CMB label on the voxels of its physical extent
    brain_mask: np.ndarray  # bool
    apparent_diameter_mm: dict  # label -> in-plane diameter of the voxels it darkens below 0.8x
    visible: dict  # label -> bool
    noise_sigma: float
    n_mc_voxels: int
    seconds: dict


@dataclass(frozen=True)
class _Background:
    """The smooth part of the field: polynomial, air cavities and iron-rich nuclei."""

    coeffs: np.ndarray
    centre: np.ndarray
    spheres: tuple  # (centre, radius, chi, reach)

    def __call__(self, p: np.ndarray, gradient: bool = False):
        f = polynomial_field(p, self.coeffs, self.centre)
        g = polynomial_gradient(p, self.coeffs, self.centre) if gradient else None
        for c, radius, chi, reach in self.spheres:
            near = np.flatnonzero(np.all(np.abs(p - c) < reach, axis=1))
            if not len(near):
                continue
            d = p[near] - c
            f[near] += sphere_field(d, radius, chi)
            if gradient:
                g[near] += sphere_field_gradient(d, radius, chi)
        return (f, g) if gradient else f


def _background(head: Head, contrast: Contrast, rng: np.random.Generator) -> _Background:
    n = n_polynomial_terms()
    scale = np.array([0.12] * 3 + [0.08] * 6 + [0.04] * (n - 9))
    spheres = []
    for _, centre, radius in head.cavities:
        # far from the cavity the sphere's field is small but not negligible: evaluate it everywhere near
        spheres.append(
            (head.to_scanner(centre)[0], radius, float(rng.uniform(9.0, 9.4)), 12.0 * radius)
        )
    for name, chi in contrast.chi.items():
        for blob in head.nuclei[name]:
            radius = (3 * blob.volume_mm3 / (4 * np.pi)) ** (1 / 3)
            spheres.append((head.to_scanner(blob.centre)[0], radius, chi, 5.0 * radius))
    return _Background(rng.standard_normal(n) * scale, head.translation.copy(), tuple(spheres))


def _sinc(x: np.ndarray) -> np.ndarray:
    return np.sinc(x / np.pi)


def _grid_axes(acq: Acquisition, affine: np.ndarray) -> list[np.ndarray]:
    return [affine[a, a] * np.arange(n) + affine[a, 3] for a, n in enumerate(acq.shape)]


def _base_signal(head, acq, affine, contrast_tables, background, rng, sign, slab=4):
    """Tissue signal everywhere: partial volume along the slice, centre field, gradient sinc."""
    pd, r2 = contrast_tables
    weight = pd * np.exp(-acq.te * r2)
    rpp = rad_per_ppm(acq.b0, acq.te)
    axes = _grid_axes(acq, affine)
    vox = np.asarray(acq.voxel_mm)
    n_sub = int(np.ceil(vox[2] / 1.0))
    nx, ny, nz = acq.shape
    signal = np.empty(acq.shape, np.complex64)
    brain = np.zeros(acq.shape, bool)
    brain_set = np.zeros(len(CLASSES), bool)
    brain_set[list(BRAIN_CLASSES)] = True
    for k0 in range(0, nz, slab):
        ks = np.arange(k0, min(k0 + slab, nz))
        centres = np.stack(np.meshgrid(axes[0], axes[1], axes[2][ks], indexing="ij"), -1).reshape(
            -1, 3
        )
        tissue = np.zeros(len(centres), np.float32)
        inside = np.zeros(len(centres), np.float32)
        for s in range(n_sub):
            jitter = np.empty_like(centres)
            jitter[:, :2] = rng.uniform(-0.5, 0.5, (len(centres), 2)) * vox[:2]
            jitter[:, 2] = ((s + rng.uniform(0, 1, len(centres))) / n_sub - 0.5) * vox[2]
            cls = head.classify(centres + jitter)
            tissue += weight[cls]
            inside += brain_set[cls]
        tissue /= n_sub
        f, g = background(centres, gradient=True)
        attenuation = np.prod(_sinc(rpp * g * vox / 2.0), axis=1)
        value = tissue * attenuation * np.exp(1j * sign * rpp * f)
        signal[:, :, ks] = value.reshape(nx, ny, len(ks)).astype(np.complex64)
        brain[:, :, ks] = (inside / n_sub >= 0.5).reshape(nx, ny, len(ks))
    return signal, brain


@dataclass
class _Source:
    kind: str  # vein, calcification, cmb
    reach: float
    params: dict
    flat: np.ndarray = None  # linear indices of the voxels it reaches
    pos: np.ndarray = None  # their positions in the list of Monte-Carlo voxels


def _voxels_near(acq, affine, lo, hi, dist_fn, reach) -> np.ndarray:
    """Linear indices of voxels whose centre is within ``reach`` (+ half a voxel diagonal) of a source."""
    inv = np.linalg.inv(affine)
    corners = np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    ijk = corners @ inv[:3, :3].T + inv[:3, 3]
    i0 = np.maximum(np.floor(ijk.min(0)).astype(int), 0)
    i1 = np.minimum(np.ceil(ijk.max(0)).astype(int) + 1, acq.shape)
    if np.any(i1 <= i0):
        return np.zeros(0, np.int64)
    grid = np.stack(
        np.meshgrid(*[np.arange(a, b) for a, b in zip(i0, i1)], indexing="ij"), -1
    ).reshape(-1, 3)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    half_diag = 0.5 * float(np.linalg.norm(acq.voxel_mm))
    keep = dist_fn(world) <= reach + half_diag
    return np.ravel_multi_index(grid[keep].T, acq.shape)


def _sources(veins, cmbs, calcs, acq, affine) -> list[_Source]:
    rpp = rad_per_ppm(acq.b0, acq.te)
    out = []
    for v in veins:
        for start, end, radius, free_start, free_end in v.pieces():
            d = end - start
            sin2 = 1.0 - (d[2] / np.linalg.norm(d)) ** 2
            reach = cylinder_reach(radius, v.chi_ppm, sin2, rpp)
            src = _Source(
                "vein",
                reach,
                dict(
                    start=start,
                    end=end,
                    radius=radius,
                    chi=v.chi_ppm,
                    free_start=free_start,
                    free_end=free_end,
                ),
            )
            lo, hi = np.minimum(start, end) - reach - 1, np.maximum(start, end) + reach + 1
            src.flat = _voxels_near(
                acq, affine, lo, hi, lambda w, a=start, b=end: segment_distance(w, a, b), reach
            )
            out.append(src)
    for kind, items in (("calcification", calcs), ("cmb", cmbs)):
        for item in items:
            reach = sphere_reach(item.radius_mm, item.chi_ppm, rpp)
            reach = max(reach, float(np.max(getattr(item, "half_axes", [item.radius_mm]))) + 0.5)
            src = _Source(kind, reach, dict(item=item))
            c = item.centre
            src.flat = _voxels_near(
                acq,
                affine,
                c - reach - 1,
                c + reach + 1,
                lambda w, c=c: np.linalg.norm(w - c, axis=1),
                reach,
            )
            out.append(src)
    return out


def _stratified_offsets(voxel_mm) -> tuple[np.ndarray, np.ndarray]:
    """Sub-voxel strata (2 x 2 x n along the slice, n up to 6): cell centres and cell size."""
    n = (2, 2, int(np.clip(np.ceil(voxel_mm[2] / 0.5), 2, 6)))
    cell = np.asarray(voxel_mm) / n
    grid = np.stack(
        np.meshgrid(*[(np.arange(m) + 0.5) / m - 0.5 for m in n], indexing="ij"), -1
    ).reshape(-1, 3)
    return grid * voxel_mm, cell


def _monte_carlo(
    head, acq, affine, tables, background, sources, rng, sign, signal, labels, chunk=20_000
):
    """Replace the signal of every voxel a source reaches by the average over random sub-voxel points."""
    pd_t, r2_t = tables
    rpp = rad_per_ppm(acq.b0, acq.te)
    if not sources:
        return {}, {}, 0
    union = np.unique(np.concatenate([s.flat for s in sources]))
    for s in sources:
        s.pos = np.searchsorted(union, s.flat)
    offsets, cell = _stratified_offsets(acq.voxel_mm)
    k = len(offsets)
    centres_all = (
        np.stack(np.unravel_index(union, acq.shape), -1) @ affine[:3, :3].T + affine[:3, 3]
    )
    out = np.empty(len(union), np.complex64)
    cmbs = [s for s in sources if s.kind == "cmb"]
    frac = {s.params["item"].label: np.zeros(len(s.pos), np.float32) for s in cmbs}
    without = {s.params["item"].label: np.zeros(len(s.pos), np.complex64) for s in cmbs}
    blood_pd, blood_r2 = pd_t[_C["vein"]], r2_t[_C["vein"]]
    for c0 in range(0, len(union), chunk):
        c1 = min(c0 + chunk, len(union))
        n = c1 - c0
        pts = (
            centres_all[c0:c1, None, :] + offsets[None] + rng.uniform(-0.5, 0.5, (n, k, 3)) * cell
        ).reshape(-1, 3)
        cls = head.classify(pts)
        pd, r2 = pd_t[cls].copy(), r2_t[cls].copy()
        fld = background(pts)
        own = {}
        for s in sources:
            sel = s.pos[(s.pos >= c0) & (s.pos < c1)] - c0
            if not len(sel):
                continue
            pidx = (sel[:, None] * k + np.arange(k)).ravel()
            q = pts[pidx]
            prm = s.params
            if s.kind == "vein":
                fld[pidx] += cylinder_field(
                    q,
                    prm["start"],
                    prm["end"],
                    prm["radius"],
                    prm["chi"],
                    prm["free_start"],
                    prm["free_end"],
                    reach=s.reach,
                )
                inside = segment_distance(q, prm["start"], prm["end"]) < prm["radius"]
                pd[pidx[inside]], r2[pidx[inside]] = blood_pd, blood_r2
                continue
            item = prm["item"]
            f = sphere_field(q - item.centre, item.radius_mm, item.chi_ppm, reach=s.reach)
            fld[pidx] += f
            inside = item.inside(q)
            if s.kind == "calcification":
                pd[pidx[inside]], r2[pidx[inside]] = (
                    pd_t[_C["calcification"]],
                    r2_t[_C["calcification"]],
                )
            else:
                own[item.label] = (sel, pidx, f, inside)
        pd_base, r2_base = pd.copy(), r2.copy()
        for sel, pidx, f, inside in own.values():
            pd[pidx[inside]], r2[pidx[inside]] = pd_t[_C["cmb"]], r2_t[_C["cmb"]]
        phase = sign * rpp * fld
        sig = (pd * np.exp(-acq.te * r2) * np.exp(1j * phase)).reshape(n, k).mean(1)
        out[c0:c1] = sig
        for s in cmbs:
            label = s.params["item"].label
            if label not in own:
                continue
            sel, pidx, f, inside = own[label]
            w = (
                pd_base[pidx]
                * np.exp(-acq.te * r2_base[pidx])
                * np.exp(1j * (phase[pidx] - sign * rpp * f))
            )
            mask = (s.pos >= c0) & (s.pos < c1)
            without[label][mask] = w.reshape(-1, k).mean(1)
            frac[label][mask] = inside.reshape(-1, k).mean(1)
    flat = signal.reshape(-1)
    flat[union] = out

    apparent, visible = {}, {}
    for s in cmbs:
        item = s.params["item"]
        sig = out[s.pos]
        ratio = np.abs(sig) / np.maximum(np.abs(without[item.label]), 1e-6)
        ratio[np.abs(without[item.label]) < 0.02] = 1.0
        ijk = np.stack(np.unravel_index(s.flat, acq.shape), -1)
        member = frac[item.label] >= 0.3
        centre_ijk = np.round(
            np.linalg.inv(affine)[:3, :3] @ item.centre + np.linalg.inv(affine)[:3, 3]
        ).astype(int)
        at_centre = np.all(ijk == centre_ijk, axis=1)
        member |= at_centre
        lab = labels.reshape(-1)
        lab[s.flat[member]] = item.label
        apparent[item.label], visible[item.label] = _apparent_diameter(
            ijk, ratio < 0.8, member, acq.voxel_mm
        )
    return apparent, visible, len(union)


def _apparent_diameter(ijk, dark, member, voxel_mm) -> tuple[float, bool]:
    """In-plane diameter of the dark voxels connected to the CMB (largest slice), and whether any is dark."""
    if not dark.any():
        return 0.0, False
    lo = ijk.min(0)
    box = np.zeros(ijk.max(0) - lo + 1, bool)
    box[tuple((ijk[dark] - lo).T)] = True
    lab, _ = ndi.label(box, structure=np.ones((3, 3, 3), bool))
    seeds = lab[tuple((ijk[member] - lo).T)]
    seeds = seeds[seeds > 0]
    if not len(seeds):
        return 0.0, True
    comp = np.isin(lab, np.unique(seeds))
    area = comp.sum(axis=(0, 1)).max() * voxel_mm[0] * voxel_mm[1]
    return float(2 * np.sqrt(area / np.pi)), True


def _coil_geometry(head: Head, acq: Acquisition, rng):
    """Coil positions on a shell around the head (upper part), falloff distances, phase ramps."""
    n = acq.n_coils
    golden = np.pi * (3 - np.sqrt(5))
    m = 4 * n
    z = 1 - (np.arange(m) + 0.5) / m * 2
    keep = np.flatnonzero(z > -0.35)
    idx = keep[np.linspace(0, len(keep) - 1, n).round().astype(int)]
    zz = z[idx]
    r = np.sqrt(1 - zz**2)
    th = golden * idx + rng.uniform(0, 2 * np.pi)
    dirs = np.stack([r * np.cos(th), r * np.sin(th), zz], -1) + rng.normal(0, 0.05, (n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    centre = head.translation
    pos = centre + dirs * (head.half_axes * 1.25 + 30.0)
    falloff = rng.uniform(55.0, 85.0, n)
    ramp = rng.normal(0, 2 * np.pi / 400.0, (n, 3))
    offset = rng.uniform(-np.pi, np.pi, n)
    return pos, falloff, ramp, offset, centre


def _sensitivity(axes, pos, falloff, ramp, offset, centre) -> np.ndarray:
    dx, dy, dz = [(a - p) ** 2 for a, p in zip(axes, pos)]
    d2 = dx[:, None, None] + dy[None, :, None] + dz[None, None, :]
    amp = (1.0 / (1.0 + d2 / falloff**2)).astype(np.float32)
    ex, ey, ez = [
        np.exp(1j * (g * (a - c))).astype(np.complex64) for g, a, c in zip(ramp, axes, centre)
    ]
    return amp * (
        np.complex64(np.exp(1j * offset))
        * ex[:, None, None]
        * ey[None, :, None]
        * ez[None, None, :]
    )


def _receive(signal, brain, head, acq, affine, tables, rng):
    """Coils, noise, RSS magnitude and body-coil-referenced phase."""
    pos, falloff, ramp, offset, centre = _coil_geometry(head, acq, rng)
    axes = _grid_axes(acq, affine)
    # noise level: white-matter signal times the median RSS sensitivity in the brain, over the SNR
    sample = np.argwhere(brain)
    sample = (
        sample[rng.choice(len(sample), min(len(sample), 20000), replace=False)]
        if len(sample)
        else sample
    )
    world = sample @ affine[:3, :3].T + affine[:3, 3] if len(sample) else np.zeros((1, 3)) + centre
    rss_s = np.sqrt(
        sum(1.0 / (1.0 + ((world - p) ** 2).sum(1) / f**2) ** 2 for p, f in zip(pos, falloff))
    )
    pd, r2 = tables
    wm = pd[_C["white_matter"]] * np.exp(-acq.te * r2[_C["white_matter"]])
    sigma = float(wm * np.median(rss_s) / acq.snr)
    rss = np.zeros(acq.shape, np.float32)
    comb = np.zeros(acq.shape, np.complex64)
    for c in range(acq.n_coils):
        s = _sensitivity(axes, pos[c], falloff[c], ramp[c], offset[c], centre)
        y = s * signal
        y.real += rng.standard_normal(acq.shape, dtype=np.float32) * np.float32(sigma)
        y.imag += rng.standard_normal(acq.shape, dtype=np.float32) * np.float32(sigma)
        rss += y.real**2 + y.imag**2
        comb += np.conj(s) * y
    return np.sqrt(rss), np.angle(comb).astype(np.float32), sigma


def simulate_scan(
    head: Head,
    veins,
    cmbs,
    calcifications,
    acq: Acquisition,
    contrast: Contrast,
    rng: np.random.Generator,
    paramagnetic_phase: str = "negative",
) -> ScanResult:
    """Simulate one scan of ``head`` with its sources (scanner coordinates)."""
    sign = 1.0 if paramagnetic_phase == "positive" else -1.0
    t = {"start": time.perf_counter()}
    affine = acq.affine(head.translation)
    tables = contrast.tables(acq.b0)
    background = _background(head, contrast, rng)
    signal, brain = _base_signal(head, acq, affine, tables, background, rng, sign)
    t["base"] = time.perf_counter()
    sources = _sources(veins, cmbs, calcifications, acq, affine)
    labels = np.zeros(acq.shape, np.int16)
    apparent, visible, n_mc = _monte_carlo(
        head, acq, affine, tables, background, sources, rng, sign, signal, labels
    )
    t["monte_carlo"] = time.perf_counter()
    magnitude, phase, sigma = _receive(signal, brain, head, acq, affine, tables, rng)
    t["receive"] = time.perf_counter()
    seconds = {
        "base": t["base"] - t["start"],
        "monte_carlo": t["monte_carlo"] - t["base"],
        "receive": t["receive"] - t["monte_carlo"],
    }
    return ScanResult(
        magnitude,
        phase,
        affine,
        labels,
        brain,
        apparent,
        visible,
        sigma,
        n_mc,
        {k: round(v, 2) for k, v in seconds.items()},
    )
