"""Patches around candidates, resampled to one working resolution whatever the acquisition.

One model serves SWI at 0.5x0.5x2 mm and GRE at 1x1x5 mm: every patch is sampled
on the same grid in millimetres (axes of the image, spacing ``spacing_mm``), so
the network always sees a lesion at the same physical size. Positions stay in the
image's own voxel indices; nothing else is resampled.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PatchSampler",
    "extract_patches",
    "symmetric_views",
    "hide_phase",
    "has_phase",
    "phase_wrap_density",
    "SCALES",
    "PATCH_CHANNELS",
    "FEATURES",
    "N_SYMMETRIES",
    "DEFAULT_PHASE_WRAP_LIMIT",
]

#: (samples per edge, mm per sample) of the fine and the coarse patch.
SCALES = ((12, 1.0), (12, 2.0))
#: Network input channels, in order.
PATCH_CHANNELS = (
    "magnitude_fine",
    "phase_fine",
    "magnitude_coarse",
    "phase_coarse",
    "brain_coarse",
    "phase_present",
)
#: Hand features given to the network's head, in order.
FEATURES = ("screen_score", "log_diameter", "sphericity", "phase_mean", "phase_present")
#: Phase wraps per brain sample beyond which a candidate is scored without its phase
#: (:func:`phase_wrap_density`); chosen on the held-out cohorts of seeds 9000-9700, where
#: 0.1-0.2 gave the same detections.
DEFAULT_PHASE_WRAP_LIMIT = 0.15
_PHASE_CHANNELS = [i for i, c in enumerate(PATCH_CHANNELS) if c.startswith("phase")]
_PHASE_FEATURES = [i for i, c in enumerate(FEATURES) if c.startswith("phase")]

# Flips of each axis and the in-plane transpose: the symmetries that training augments
# with. They keep B0 on the through-plane axis, and a dipole's phase is even in each
# axis, so the phase channels need no sign change. Order: left-right first, then the
# other in-plane flip, then through-plane, then the transposed views.
_FLIPS = ((), (2,), (3,), (2, 3), (4,), (2, 4), (3, 4), (2, 3, 4))
_SYMMETRIES = tuple((f, False) for f in _FLIPS) + tuple((f, True) for f in _FLIPS)
#: Number of distinct patch symmetries :func:`symmetric_views` can give.
N_SYMMETRIES = len(_SYMMETRIES)


class PatchSampler:
    """Multi-scale network input around candidates of one scan: ``(N, 6, S, S, S)`` float32.

    The scan's channels are stacked once, on ``device`` (the CPU or a CUDA device),
    and every call samples a batch of candidates there.

    Default scales: 12 mm at 1 mm and 24 mm at 2 mm (:data:`SCALES`).

    Channels (:data:`PATCH_CHANNELS`): magnitude and phase / pi at the fine scale
    (lesion shape), magnitude, phase / pi and the brain mask at the coarse scale
    (context: vein continuity, brain edge, deep nuclei), and a constant 1 when the
    phase is present (0 when absent: its channels are then 0).

    >>> mag = np.ones((20, 20, 10), np.float32)
    >>> PatchSampler(mag, mag > 0, None, (1, 1, 2))(np.array([[10, 10, 5]])).shape
    torch.Size([1, 6, 12, 12, 12])
    """

    def __init__(
        self,
        magnitude: np.ndarray,
        mask: np.ndarray,
        phase: np.ndarray | None,
        zooms,
        scales=SCALES,
        device: torch.device | str = "cpu",
    ):
        (self.n_fine, self.mm_fine), (n_coarse, self.mm_coarse) = scales
        if self.n_fine != n_coarse:
            raise ValueError("both scales must have the same number of samples per edge")
        self.has_phase = phase is not None
        chans = [magnitude.astype(np.float32)]
        if self.has_phase:
            chans.append((phase / np.pi).astype(np.float32))
        chans.append(mask.astype(np.float32))
        self.volume = torch.from_numpy(np.stack(chans)).to(
            device
        )  # (C, X, Y, Z): magnitude, [phase], brain
        self.zooms = zooms

    @staticmethod
    def bytes_needed(shape, has_phase: bool) -> int:
        """Device memory the stacked channels of a scan of ``shape`` take."""
        return 4 * (3 if has_phase else 2) * int(np.prod(shape))

    def __call__(self, centres_ijk: np.ndarray) -> torch.Tensor:
        n, s = len(centres_ijk), self.n_fine
        image = self.volume[:-1]
        fine = extract_patches(image, self.zooms, centres_ijk, s, self.mm_fine)
        coarse = extract_patches(self.volume, self.zooms, centres_ijk, s, self.mm_coarse)
        zeros = fine.new_zeros((n, 1, s, s, s))
        ph_f = fine[:, 1:2] if self.has_phase else zeros
        ph_c = coarse[:, 1:2] if self.has_phase else zeros
        present = fine.new_full((n, 1, s, s, s), float(self.has_phase))
        return torch.cat([fine[:, :1], ph_f, coarse[:, :1], ph_c, coarse[:, -1:], present], dim=1)


def has_phase(patches: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: which patches carry a phase (their ``phase_present`` channel is 1)."""
    return patches[:, PATCH_CHANNELS.index("phase_present"), 0, 0, 0] > 0


def hide_phase(
    patches: torch.Tensor, features: torch.Tensor, which: torch.Tensor | None = None
) -> tuple:
    """Copies of ``patches`` and ``features`` as the network sees a scan without phase.

    The phase channels and the phase features of the rows ``which`` (default: all) are
    zeroed. Training hides the phase of random patches with it (phase dropout), and
    scoring hides the phase of candidates whose phase is wrapped beyond use
    (:func:`phase_wrap_density`).

    >>> x, f = torch.ones(2, 6, 1, 1, 1), torch.ones(2, 5)
    >>> xh, fh = hide_phase(x, f, torch.tensor([False, True]))
    >>> xh[:, :, 0, 0, 0].tolist(), fh.tolist()
    ([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]], [[1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]])
    """
    x, f = patches.clone(), features.clone()
    rows = torch.arange(len(x), device=x.device) if which is None else which.nonzero()[:, 0]
    x[rows[:, None], torch.tensor(_PHASE_CHANNELS, device=x.device)[None, :]] = 0
    f[rows[:, None], torch.tensor(_PHASE_FEATURES, device=f.device)[None, :]] = 0
    return x, f


def phase_wrap_density(patches: torch.Tensor) -> torch.Tensor:
    """``(N,)`` phase wraps per brain sample in each patch's coarse (24 mm) context.

    A wrap is a step of more than pi/2 between neighbouring coarse samples (2 mm
    apart) inside the brain. The high-pass phase of brain tissue, with its CMBs and
    veins, has few: half the candidates of a scan have none. Near the temporal bone
    or a sinus, where the homodyne filter leaves the air's field in fringes, the
    density is 0.2 and more, and the network, given such a phase, rejects the CMBs
    there. Patches without phase give 0.

    >>> x = torch.zeros(2, 6, 12, 12, 12)
    >>> x[1, 3] = torch.arange(12.0).remainder(2)[:, None, None] - 0.5  # fringes along one axis
    >>> x[:, 4] = 1.0  # all brain
    >>> [round(v, 3) for v in phase_wrap_density(x).tolist()]
    [0.0, 0.917]
    """
    phase = patches[:, PATCH_CHANNELS.index("phase_coarse")]  # radians / pi
    brain = patches[:, PATCH_CHANNELS.index("brain_coarse")] > 0.5
    n = phase.shape[-1]
    wraps = sum(
        ((phase.diff(dim=a).abs() > 0.5) & brain.narrow(a, 1, n - 1)).sum((1, 2, 3))
        for a in (1, 2, 3)
    )
    return wraps.float() / brain.sum((1, 2, 3)).clamp(min=1).float()


def extract_patches(
    volume: np.ndarray | torch.Tensor,
    zooms,
    centres_ijk: np.ndarray,
    size: int = 24,
    spacing_mm: float = 1.0,
) -> torch.Tensor:
    """Sample ``(N, C, size, size, size)`` patches centred on voxel positions ``centres_ijk``.

    Parameters
    ----------
    volume : (C, X, Y, Z) ndarray or tensor
        Channels on the image grid; patches are sampled on the tensor's device.
    zooms : sequence of 3 float
        Voxel size of the image (mm).
    centres_ijk : (N, 3) ndarray
        Patch centres in (fractional) voxel indices.
    size, spacing_mm
        Patch edge in samples, and the sample spacing in mm along each image axis.

    Returns
    -------
    torch.Tensor
        Trilinear samples, zero outside the image.

    Examples
    --------
    >>> vol = np.arange(4 * 4 * 4, dtype=np.float32).reshape(1, 4, 4, 4)
    >>> p = extract_patches(vol, (2, 2, 2), np.array([[1.0, 2.0, 1.0]]), size=3, spacing_mm=2.0)
    >>> bool(round(float(p[0, 0, 1, 1, 1]), 4) == vol[0, 1, 2, 1])
    True
    >>> [round(float(v), 4) for v in p[0, 0, :, 1, 1]]  # along i, one voxel (2 mm) apart
    [9.0, 25.0, 41.0]
    """
    vol = (
        volume
        if torch.is_tensor(volume)
        else torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    )
    shape = np.array(vol.shape[1:], float)
    offsets = (np.arange(size) - (size - 1) / 2.0) * spacing_mm
    steps = [offsets / z for z in zooms]  # offsets in voxels along each axis
    gi, gj, gk = np.meshgrid(*steps, indexing="ij")
    local = np.stack([gi, gj, gk], -1)  # (S, S, S, 3) in voxels
    centres = np.asarray(centres_ijk, float).reshape(-1, 1, 1, 1, 3)
    ijk = centres + local[None]
    norm = 2.0 * ijk / np.maximum(shape - 1.0, 1.0) - 1.0
    # grid_sample's last grid axis is (W, H, D) = (k, j, i) for a (D, H, W) = (X, Y, Z) volume.
    grid = torch.from_numpy(norm[..., ::-1].astype(np.float32).copy()).to(vol.device)
    n = grid.shape[0]
    return F.grid_sample(
        vol[None].expand(n, -1, -1, -1, -1),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )


def symmetric_views(patches: torch.Tensor, n: int):
    """Yield ``patches`` (``(N, C, S, S, S)``) under the first ``n`` of :data:`N_SYMMETRIES` symmetries.

    The first view is the identity; test-time augmentation averages the network's
    output over the views.

    >>> x = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    >>> [v[0, 0, :, 0, 0].tolist() for v in symmetric_views(x, 2)]
    [[0.0, 4.0], [4.0, 0.0]]
    """
    if not 1 <= n <= N_SYMMETRIES:
        raise ValueError(f"test-time augmentation takes 1 to {N_SYMMETRIES} views, got {n}")
    for flips, transpose in _SYMMETRIES[:n]:
        view = patches.flip(flips) if flips else patches
        yield view.transpose(2, 3) if transpose else view
