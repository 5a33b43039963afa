"""Acquisition presets and scanner sites of the synthetic cohorts.

``mixed`` draws one of the fixed presets per subject; ``randomized`` draws every
parameter from wide ranges (:data:`RANDOMIZED`) for domain-randomized training data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "Acquisition",
    "PRESETS",
    "PRESET_NAMES",
    "LAYOUTS",
    "RANDOMIZED",
    "SITES",
    "Site",
    "draw_acquisition",
]

# BIDS naming variants found in the wild.
LAYOUTS = ("T2starw", "MEGRE", "GRE", "swi-swi", "swi-anat")


@dataclass(frozen=True)
class Acquisition:
    name: str
    voxel_mm: tuple[float, float, float]
    matrix: tuple[int, int, int]
    b0: float
    tes: tuple[float, ...]  # seconds
    tr: float
    flip_deg: float
    snr: float  # white-matter signal / noise sigma at the first echo
    layout: str
    model_step: int = 1  # MNI head model resolution (mm)
    bias_scale: float = 0.12  # strength of the smooth receive-bias field (log amplitude)
    contrast_jitter: float = (
        1.0  # scale of the per-subject tissue contrast jitter (TissueContrast.jittered)
    )
    fov_mm: tuple[float, float, float] | None = (
        None  # field of view drawn (randomized preset); None: voxel x matrix
    )

    @property
    def multi_echo(self) -> bool:
        return len(self.tes) > 1


PRESETS: dict[str, Acquisition] = {
    "swi-3t": Acquisition(
        "swi-3t", (0.5, 0.5, 2.0), (512, 448, 72), 3.0, (0.020,), 0.028, 15, 28, "GRE"
    ),
    "gre-1.5t": Acquisition(
        "gre-1.5t", (1.0, 1.0, 3.0), (256, 224, 48), 1.5, (0.025,), 0.8, 20, 24, "T2starw"
    ),
    "gre-3t": Acquisition(
        "gre-3t", (0.8, 0.8, 2.5), (288, 256, 58), 3.0, (0.020,), 0.7, 18, 24, "T2starw"
    ),
    "megre": Acquisition(
        "megre",
        (1.0, 1.0, 2.0),
        (240, 208, 72),
        3.0,
        (0.005, 0.011, 0.017, 0.023, 0.029),
        0.04,
        15,
        30,
        "MEGRE",
    ),
    "tiny": Acquisition(
        "tiny", (1.5, 1.5, 2.5), (128, 150, 60), 3.0, (0.020,), 0.028, 15, 30, "GRE", model_step=2
    ),
}
PRESET_NAMES = (*PRESETS, "mixed", "randomized")


@dataclass(frozen=True)
class Site:
    name: str
    manufacturer: str
    model: str
    b0: float
    paramagnetic_phase: str  # sign of a paramagnetic shift in this vendor's raw phase


SITES = (
    Site("siteA", "Siemens", "Prisma", 3.0, "negative"),
    Site("siteB", "GE", "Discovery MR750", 3.0, "positive"),
    Site("siteC", "Philips", "Ingenia", 1.5, "negative"),
    Site("siteD", "Siemens", "Avanto", 1.5, "negative"),
    Site("siteE", "Siemens", "MAGNETOM Terra", 7.0, "negative"),
    Site("siteF", "GE", "SIGNA 7.0T", 7.0, "positive"),
)

_MIXED = (("swi-3t", 0.35), ("gre-1.5t", 0.25), ("gre-3t", 0.2), ("megre", 0.2))
_MIXED_LAYOUTS = {
    "swi-3t": ("GRE", "swi-swi", "swi-anat"),
    "gre-1.5t": ("T2starw", "GRE"),
    "gre-3t": ("T2starw", "GRE"),
    "megre": ("MEGRE",),
}


# Ranges of the randomized preset, per scan. TE ranges are per field (T2* shortens with B0).
RANDOMIZED = {
    "field_strength": ((1.5, 3.0, 7.0), (0.3, 0.5, 0.2)),  # values, probabilities
    "in_plane_mm": (0.4, 1.2),
    "slice_mm": (1.0, 5.0),
    "te_ms": {1.5: (10.0, 40.0), 3.0: (5.0, 40.0), 7.0: (5.0, 25.0)},
    "multi_echo": 0.25,  # probability; 3-5 echoes from 5-8 ms, 3-8 ms apart, the last within the TE range
    "snr": (12.0, 45.0),
    "bias_scale": (0.03, 0.35),
    "contrast_jitter": (0.5, 2.5),
    # Field of view (x left-right, y anterior-posterior, z slab): the brain with room for the
    # pose; in-plane at most 512 voxels, and at most 512 x 448 x 72 voxels in all (a thinner slab).
    "fov_mm": ((185.0, 230.0), (205.0, 240.0), (120.0, 150.0)),
    "max_in_plane": 512,
    "max_voxels": 512 * 448 * 72,
    "layouts": ("GRE", "swi-swi", "swi-anat", "T2starw"),  # single echo; multi-echo is MEGRE
}


def _draw_randomized(rng: np.random.Generator, slice_mm: float | None) -> Acquisition:
    r = RANDOMIZED
    values, probs = r["field_strength"]
    b0 = float(values[rng.choice(len(values), p=probs)])
    in_plane = float(rng.uniform(*r["in_plane_mm"]))
    thickness = float(slice_mm) if slice_mm else float(rng.uniform(*r["slice_mm"]))
    te_lo, te_hi = r["te_ms"][b0]
    if rng.random() < r["multi_echo"]:
        n_echoes = int(rng.integers(3, 6))
        first = float(rng.uniform(5.0, 8.0))
        spacing = float(rng.uniform(3.0, min(8.0, (te_hi - first) / (n_echoes - 1))))
        tes = tuple(round(first + e * spacing, 2) / 1000.0 for e in range(n_echoes))
    else:
        tes = (round(float(rng.uniform(te_lo, te_hi)), 2) / 1000.0,)
    fov = tuple(float(rng.uniform(*lim)) for lim in r["fov_mm"])
    nx, ny = (min(int(round(f / in_plane)), r["max_in_plane"]) for f in fov[:2])
    nz = max(8, min(int(round(fov[2] / thickness)), r["max_voxels"] // (nx * ny)))
    if thickness <= 2.5:  # 3D acquisition
        tr, flip = tes[-1] + float(rng.uniform(0.005, 0.015)), float(rng.uniform(10.0, 20.0))
    else:  # 2D multi-slice
        tr, flip = float(rng.uniform(0.4, 0.9)), float(rng.uniform(15.0, 25.0))
    layout = "MEGRE" if len(tes) > 1 else r["layouts"][rng.integers(len(r["layouts"]))]
    return Acquisition(
        "randomized",
        (round(in_plane, 3), round(in_plane, 3), round(thickness, 3)),
        (nx, ny, nz),
        b0,
        tes,
        round(tr, 4),
        round(flip, 1),
        round(float(rng.uniform(*r["snr"])), 2),
        layout,
        bias_scale=round(float(rng.uniform(*r["bias_scale"])), 4),
        contrast_jitter=round(float(rng.uniform(*r["contrast_jitter"])), 3),
        fov_mm=tuple(round(f, 1) for f in fov),
    )


def draw_acquisition(
    preset: str,
    rng: np.random.Generator,
    layout: str | None = None,
    slice_mm: float | None = None,
    n_echoes: int | None = None,
) -> tuple[Acquisition, Site]:
    """The acquisition and site of one scan; ``mixed`` and ``randomized`` draw both per scan.

    >>> acq, site = draw_acquisition("gre-1.5t", np.random.default_rng(0), slice_mm=5.0)
    >>> acq.voxel_mm, acq.matrix[2], site.b0
    ((1.0, 1.0, 5.0), 29, 1.5)
    """
    if preset == "mixed":
        names = [n for n, _ in _MIXED]
        name = names[rng.choice(len(names), p=[w for _, w in _MIXED])]
        acq = PRESETS[name]
        layout = layout or _MIXED_LAYOUTS[name][rng.integers(len(_MIXED_LAYOUTS[name]))]
        if name == "gre-1.5t" and slice_mm is None and rng.random() < 0.4:
            slice_mm = 5.0
        if name == "megre" and n_echoes is None:
            n_echoes = int(rng.integers(3, 6))
    elif preset == "randomized":
        acq = _draw_randomized(rng, slice_mm)
        slice_mm = None  # drawn with it, within the voxel budget
    else:
        acq = PRESETS[preset]
    if layout:
        acq = replace(acq, layout=layout)
    if slice_mm:
        fov = acq.voxel_mm[2] * acq.matrix[2]
        acq = replace(
            acq,
            voxel_mm=(*acq.voxel_mm[:2], slice_mm),
            matrix=(*acq.matrix[:2], int(round(fov / slice_mm))),
        )
    if n_echoes and acq.multi_echo:
        acq = replace(acq, tes=acq.tes[:n_echoes])
    sites = [s for s in SITES if s.b0 == acq.b0]
    return acq, sites[rng.integers(len(sites))]
