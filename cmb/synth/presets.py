"""Acquisition presets and scanner sites of the synthetic cohorts."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["Acquisition", "PRESETS", "LAYOUTS", "SITES", "Site", "draw_acquisition"]

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

    @property
    def multi_echo(self) -> bool:
        return len(self.tes) > 1


PRESETS: dict[str, Acquisition] = {
    "swi-3t": Acquisition("swi-3t", (0.5, 0.5, 2.0), (512, 448, 72), 3.0, (0.020,), 0.028, 15, 28, "GRE"),
    "gre-1.5t": Acquisition("gre-1.5t", (1.0, 1.0, 3.0), (256, 224, 48), 1.5, (0.025,), 0.8, 20, 24, "T2starw"),
    "gre-3t": Acquisition("gre-3t", (0.8, 0.8, 2.5), (288, 256, 58), 3.0, (0.020,), 0.7, 18, 24, "T2starw"),
    "megre": Acquisition(
        "megre", (1.0, 1.0, 2.0), (240, 208, 72), 3.0, (0.005, 0.011, 0.017, 0.023, 0.029), 0.04, 15, 30, "MEGRE"
    ),
    "tiny": Acquisition("tiny", (1.5, 1.5, 2.5), (128, 150, 60), 3.0, (0.020,), 0.028, 15, 30, "GRE", model_step=2),
}
PRESET_NAMES = (*PRESETS, "mixed")


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
)

_MIXED = (("swi-3t", 0.35), ("gre-1.5t", 0.25), ("gre-3t", 0.2), ("megre", 0.2))
_MIXED_LAYOUTS = {
    "swi-3t": ("GRE", "swi-swi", "swi-anat"),
    "gre-1.5t": ("T2starw", "GRE"),
    "gre-3t": ("T2starw", "GRE"),
    "megre": ("MEGRE",),
}


def draw_acquisition(preset: str, rng: np.random.Generator, layout: str | None = None,
                     slice_mm: float | None = None, n_echoes: int | None = None) -> tuple[Acquisition, Site]:
    """The acquisition and site of one scan; ``mixed`` draws both per scan.

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
    else:
        acq = PRESETS[preset]
    if layout:
        acq = replace(acq, layout=layout)
    if slice_mm:
        fov = acq.voxel_mm[2] * acq.matrix[2]
        acq = replace(acq, voxel_mm=(*acq.voxel_mm[:2], slice_mm), matrix=(*acq.matrix[:2], int(round(fov / slice_mm))))
    if n_echoes and acq.multi_echo:
        acq = replace(acq, tes=acq.tes[:n_echoes])
    sites = [s for s in SITES if s.b0 == acq.b0]
    return acq, sites[rng.integers(len(sites))]
