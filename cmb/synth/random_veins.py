"""Domain-randomized veins (``--vein-model randomized``) and microbleeds placed against them.

The anatomical veins of :mod:`cmb.synth.lesions` follow anatomy (medullary veins
towards the ventricles, pial veins along the surface), with narrow ranges of
calibre, length and shape. A detector trained on them alone learns those veins
rather than what makes a vein a vein, and fires on the veins it never saw: straight
ones along B0 (round dots on axial slices), thick ones, their free ends. These
veins break those correlations: every orientation, with a fixed share within
:data:`B0_CONE_DEG` of B0; radius and length log-uniform over wide ranges;
straight, curved (a circular arc) and branching (a child leaving its parent);
free ends inside the parenchyma; some passing across another vein.

Each vein is drawn in the *scanner* space of the subject's first scan, where B0 is
the z axis, so that the share along B0 is the share the images show; its points
are then mapped back through the head pose and the warp to MNI space, from where
they follow the same path as every other source (:func:`cmb.synth.lesions.to_subject_space`,
then the pose again). Later sessions of the subject have other poses, which turn
the veins by up to about 20 degrees; each scan's ``*_mimics.tsv`` gives the angle
to B0 in that scan.

A vein is simulated as pieces about as long as their fine-grid margin (short for
thin veins, longer for thick ones), which keeps each fine-grid patch small; the
pieces end in flat cuts, not overlapping caps (:class:`cmb.synth.physics.Source`),
so a joint does not look like a bead on the vein.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi

from cmb.mars_region import CSF_LABEL
from cmb.synth.anatomy import HeadModel
from cmb.synth.geometry import SubjectWarp, vein_clearance
from cmb.synth.lesions import TOUCH_MARGIN_MM, Lesion, draw_cmb_size, labels_at, vein_paths
from cmb.synth.physics import Source, simulation_margin_mm

__all__ = [
    "B0_SHARE",
    "B0_CONE_DEG",
    "RADIUS_MM",
    "LENGTH_MM",
    "SHAPES",
    "TOUCH_SHARE",
    "random_direction",
    "place_random_veins",
    "place_touching_cmbs",
]

B0_SHARE = 0.35  # veins drawn within B0_CONE_DEG of B0 (the uniform rest adds about 4 %)
B0_CONE_DEG = 20.0
PARALLEL_SHARE = 0.2  # of those, exactly along B0
RADIUS_MM = (0.15, 1.5)  # log-uniform
LENGTH_MM = (5.0, 80.0)  # log-uniform, before the brain boundary cuts a vein short
CHI_PPM = (0.2, 0.55)  # venous blood against tissue, from well to poorly oxygenated
SHAPES = (("straight", 0.4), ("curved", 0.35), ("branching", 0.25))
TURN_DEG = (20.0, 150.0)  # total turn of a curved vein
BRANCH_ANGLE_DEG = 25.0  # least angle between a branch and its parent
CROSSING_SHARE = 0.15  # veins drawn across an earlier one
TOUCH_SHARE = 0.15  # CMBs placed against a vein
_STEP_MM = 1.0  # path sampling


def random_direction(rng: np.random.Generator, b0_share: float = B0_SHARE) -> np.ndarray:
    """A unit vector in scanner space: within :data:`B0_CONE_DEG` of z with probability ``b0_share``, else uniform.

    >>> d = np.array([random_direction(np.random.default_rng(s)) for s in range(2000)])
    >>> bool(0.35 < np.mean(np.abs(d[:, 2]) > np.cos(np.radians(20))) < 0.45)
    True
    >>> bool(0.05 < np.mean(np.abs(d[:, 2]) == 1.0) < 0.09)  # exactly along B0: B0_SHARE * PARALLEL_SHARE
    True
    """
    if rng.random() < b0_share:
        if rng.random() < PARALLEL_SHARE:
            d = np.array([0.0, 0.0, 1.0])
        else:
            c = rng.uniform(np.cos(np.radians(B0_CONE_DEG)), 1.0)
            phi = rng.uniform(0, 2 * np.pi)
            d = np.array([np.sqrt(1 - c * c) * np.cos(phi), np.sqrt(1 - c * c) * np.sin(phi), c])
    else:
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
    return -d if rng.random() < 0.5 else d


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _log_uniform(rng, lo, hi) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _arc_length(path: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum())


class _Frame:
    """Scanner space of one head pose and its maps to and from MNI."""

    def __init__(self, model: HeadModel, warp: SubjectWarp, pose: np.ndarray):
        self.model, self.warp, self.pose, self.inv = model, warp, pose, np.linalg.inv(pose)

    def to_mni(self, x: np.ndarray) -> np.ndarray:
        return self.warp.to_mni(np.atleast_2d(x) @ self.inv[:3, :3].T + self.inv[:3, 3])

    def to_scanner(self, mni: np.ndarray) -> np.ndarray:
        return self.warp.from_mni(np.atleast_2d(mni)) @ self.pose[:3, :3].T + self.pose[:3, 3]

    def lookup(self, mask: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``mask`` (on the head model grid) at scanner points ``x``; False outside the grid."""
        ijk = np.round(self.model.mni_to_index(self.to_mni(x))).astype(int)
        ok = np.all((ijk >= 0) & (ijk < np.array(self.model.shape)), axis=1)
        out = np.zeros(len(ijk), bool)
        out[ok] = mask[tuple(ijk[ok].T)]
        return out


@functools.lru_cache(maxsize=4)
def _tissue(model: HeadModel) -> np.ndarray:
    """Parenchyma (not CSF, not a dural sinus or deep vein): where vein centres and touching CMBs go."""
    return (
        ((model.gm + model.wm) >= 0.5)
        & model.brain
        & (model.mars > 0)
        & (model.mars != CSF_LABEL)
        & (model.veins < 0.05)
    )


@functools.lru_cache(maxsize=4)
def _cmb_tissue(model: HeadModel) -> np.ndarray:
    tissue = (
        ((model.gm + model.wm) >= 0.9)
        & (model.mars > 0)
        & (model.mars != CSF_LABEL)
        & (model.veins < 0.05)
    )
    return ndi.binary_erosion(tissue)


@functools.lru_cache(maxsize=4)
def _sites(model: HeadModel) -> np.ndarray:
    return np.argwhere(_tissue(model))


def _straight(length: float, d: np.ndarray) -> np.ndarray:
    t = np.linspace(-length / 2, length / 2, max(2, int(np.ceil(length / _STEP_MM)) + 1))
    return t[:, None] * d


def _arc(length: float, d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A circular arc of ``length`` whose chord runs along ``d``, centred on the chord's middle."""
    turn = np.radians(rng.uniform(*TURN_DEG))
    e = _unit(np.cross(d, rng.normal(size=3)))
    radius = length / turn
    phi = np.linspace(-turn / 2, turn / 2, max(3, int(np.ceil(length / _STEP_MM)) + 1))
    return (
        radius * np.sin(phi)[:, None] * d + radius * (np.cos(phi) - np.cos(turn / 2))[:, None] * e
    )


def _inside_run(frame: _Frame, path: np.ndarray, anchor: int) -> np.ndarray | None:
    """The part of ``path`` inside the brain that contains point ``anchor``; None if that point is outside."""
    inside = frame.lookup(frame.model.brain, path)
    if not inside[anchor]:
        return None
    lo, hi = anchor, anchor
    while lo > 0 and inside[lo - 1]:
        lo -= 1
    while hi < len(path) - 1 and inside[hi + 1]:
        hi += 1
    return path[lo : hi + 1]


def _draw_vein(
    frame: _Frame, rng, shape: str, centre: np.ndarray, d: np.ndarray
) -> np.ndarray | None:
    length = _log_uniform(rng, *LENGTH_MM)
    local = _straight(length, d) if shape == "straight" else _arc(length, d, rng)
    mid = len(local) // 2
    path = _inside_run(frame, local - local[mid] + centre, mid)
    return (
        path if path is not None and len(path) >= 2 and _arc_length(path) >= LENGTH_MM[0] else None
    )


def _draw_branch(frame: _Frame, rng, parent: dict) -> dict | None:
    path = parent["path"]
    k = int(rng.integers(max(1, int(0.2 * len(path))), max(2, int(0.8 * len(path)))))
    k = min(k, len(path) - 2)
    tangent = _unit(path[k + 1] - path[k])
    for _ in range(30):
        d = random_direction(rng)
        if abs(d @ tangent) <= np.cos(np.radians(BRANCH_ANGLE_DEG)):
            break
    else:
        d = _unit(np.cross(tangent, rng.normal(size=3)))
    length = _log_uniform(rng, LENGTH_MM[0], 40.0)
    straight = bool(rng.random() < 0.7)
    local = _straight(length, d) if straight else _arc(length, d, rng)
    branch = _inside_run(frame, local - local[0] + path[k], 0)
    if branch is None or len(branch) < 2 or _arc_length(branch) < LENGTH_MM[0]:
        return None
    radius = max(RADIUS_MM[0], parent["radius"] * float(rng.uniform(0.4, 0.85)))
    return {
        "path": branch,
        "radius": radius,
        "shape": "branch",
        "straight": straight,
        "parent": parent["id"],
    }


def place_random_veins(
    model: HeadModel,
    warp: SubjectWarp,
    pose: np.ndarray,
    rng: np.random.Generator,
    n: int,
    first_id: int = 0,
    b0_share: float = B0_SHARE,
) -> list[Lesion]:
    """``n`` randomized veins (children of branching veins count as veins), aimed in the scanner space of ``pose``.

    Returns one lesion per piece of each vein (see :func:`_pieces`); the pieces of a
    vein share ``extra["vein_id"]`` (from ``first_id`` on), ``extra["path"]`` (its
    whole axis) and ``extra["shape"]`` (``straight``, ``curved`` or ``branch``, with
    ``extra["parent"]`` the parent's id). Points are in MNI space, as those of
    :func:`cmb.synth.lesions.place_veins`.
    """
    frame = _Frame(model, warp, pose)
    sites = _sites(model)
    names = [s for s, _ in SHAPES]
    probs = [p for _, p in SHAPES]
    veins: list[dict] = []
    tries = 0
    while len(veins) < n and tries < 40 * max(n, 1):
        tries += 1
        shape = names[rng.choice(len(names), p=probs)]
        drawn = "straight" if shape == "branching" and rng.random() < 0.5 else shape
        drawn = "curved" if drawn == "branching" else drawn
        radius = _log_uniform(rng, *RADIUS_MM)
        d = random_direction(rng, b0_share)
        if veins and rng.random() < CROSSING_SHARE:
            other = veins[rng.integers(len(veins))]
            k = int(rng.integers(len(other["path"]) - 1))
            tangent = _unit(other["path"][k + 1] - other["path"][k])
            if abs(d @ tangent) > np.cos(np.radians(30.0)):
                continue
            gap = rng.uniform(0.0, radius + other["radius"] + 0.5)
            centre = other["path"][k] + gap * _unit(np.cross(d, tangent))
        else:
            ijk = sites[rng.integers(len(sites))] + rng.uniform(-0.5, 0.5, 3)
            centre = frame.to_scanner(model.index_to_mni(ijk))[0]
        path = _draw_vein(frame, rng, drawn, centre, d)
        if path is None:
            continue
        vein = {
            "path": path,
            "radius": radius,
            "shape": drawn,
            "straight": drawn == "straight",
            "parent": None,
            "id": first_id + len(veins),
        }
        veins.append(vein)
        if shape == "branching":
            for _ in range(int(rng.integers(1, 3))):
                if len(veins) >= n:
                    break
                branch = _draw_branch(frame, rng, vein)
                if branch is not None:
                    veins.append({**branch, "id": first_id + len(veins)})
    out: list[Lesion] = []
    for vein in veins:
        out.extend(_vein_lesions(model, frame, vein, rng))
    return out


def _pieces(
    path: np.ndarray, radius: float, straight: bool
) -> list[tuple[np.ndarray, tuple[bool, bool]]]:
    """Split a vein axis (sampled every :data:`_STEP_MM`) into guarded pieces (see :class:`cmb.synth.physics.Source`).

    A piece is about ``sqrt(3)`` times the fine-grid margin long: this minimizes the
    summed volume of the patches of an oblique vein. A straight piece keeps only its
    two ends (and guards).
    """
    margin = simulation_margin_mm(Source("vein", path[:2], radius, 0.0))
    piece_mm = float(np.clip(np.sqrt(3.0) * margin, 4.0, 16.0))
    n_pieces = int(np.clip(round(_arc_length(path) / piece_mm), 1, len(path) - 1))
    bounds = np.round(np.linspace(0, len(path) - 1, n_pieces + 1)).astype(int)
    out = []
    for k in range(n_pieces):
        a, b = bounds[k], bounds[k + 1]
        core = path[[a, b]] if straight else path[a : b + 1]
        start, end = k > 0, k < n_pieces - 1
        none = np.empty((0, 3))
        pts = np.vstack([path[[a - 1]] if start else none, core, path[[b + 1]] if end else none])
        out.append((pts, (start, end)))
    return out


def _vein_lesions(model: HeadModel, frame: _Frame, vein: dict, rng: np.random.Generator):
    chi = float(rng.uniform(*CHI_PPM))
    pd_scale, r2s = float(rng.uniform(0.8, 1.0)), float(rng.uniform(10.0, 60.0))
    pieces = _pieces(vein["path"], vein["radius"], vein["straight"])
    mapped = frame.to_mni(np.vstack([vein["path"], *[p for p, _ in pieces]]))
    path_mni = mapped[: len(vein["path"])]
    labels = labels_at(model, path_mni[len(path_mni) // 2])
    start = len(vein["path"])
    for pts, guards in pieces:
        extra = {
            "type": "vein_randomized",
            "vein_id": vein["id"],
            "path": path_mni,
            "shape": vein["shape"],
            "parent": vein["parent"],
            "guards": guards,
        }
        src = Source(
            kind="vein",
            points=mapped[start : start + len(pts)],
            radius_mm=vein["radius"],
            chi_ppm=chi,
            pd_scale=pd_scale,
            r2s_extra=r2s,
            extra=extra,
        )
        start += len(pts)
        yield Lesion(src, path_mni[len(path_mni) // 2], *labels)


def place_touching_cmbs(
    model: HeadModel,
    warp: SubjectWarp,
    pose: np.ndarray,
    veins: list[Lesion],
    n: int,
    rng: np.random.Generator,
    prior: dict[str, float],
    b0: float = 3.0,
    te: float = 0.02,
    existing: list[Lesion] = (),
    size_model: str = "typical",
) -> list[Lesion]:
    """Up to ``n`` microbleeds against one of ``veins`` (vein lesions, in MNI space).

    The touching distance is the CMB's radius + the vein's radius +
    :data:`cmb.synth.lesions.TOUCH_MARGIN_MM`; the centre lies outside the vein's
    lumen, at 0.35-0.85 of that distance from the axis in the scanner space of
    ``pose``, so that the other poses of the subject (a few per cent of scaling)
    keep it touching. The MARS category follows ``prior`` when a vein
    passes through it; sizes and contrast are drawn as in
    :func:`cmb.synth.lesions.place_cmbs`. Labels follow those of ``existing``.
    """
    if not n:
        return []
    paths_mni, radii = vein_paths(veins)
    if not paths_mni:
        return []
    frame = _Frame(model, warp, pose)
    paths = [frame.to_scanner(p) for p in paths_mni]
    cats = [c for c in prior if prior[c] > 0]
    p = np.array([prior[c] for c in cats], float)
    p /= p.sum()
    tissue = _cmb_tissue(model)
    out: list[Lesion] = []
    tries = 0
    while len(out) < n and tries < 200 * n:
        tries += 1
        cat = cats[rng.choice(len(cats), p=p)]
        k = int(rng.integers(len(paths)))
        path, r_vein = paths[k], radii[k]
        seg = np.diff(path, axis=0)
        cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(seg, axis=1))])
        s = rng.uniform(0.0, cum[-1])
        i = int(np.clip(np.searchsorted(cum, s) - 1, 0, len(seg) - 1))
        on_axis = path[i] + (s - cum[i]) / max(cum[i + 1] - cum[i], 1e-9) * seg[i]
        chi = float(rng.uniform(0.6, 2.0))
        _, radius = draw_cmb_size(rng, chi, b0, te, size_model)
        touch = r_vein + radius + TOUCH_MARGIN_MM
        dist = rng.uniform(max(r_vein, 0.35 * touch), 0.85 * touch)
        x = on_axis + dist * _unit(np.cross(seg[i], rng.normal(size=3)))
        if not frame.lookup(tissue, x)[0] or vein_clearance(x, paths, radii)[0] < 0:
            continue
        mni = frame.to_mni(x)[0]
        if any(
            np.linalg.norm(mni - o.mni) < 4.0 * (radius + o.source.radius_mm) + 2.0
            for o in (*existing, *out)
        ):
            continue
        labels = labels_at(model, mni)
        if labels[0] not in cats or (
            labels[0] != cat and tries < 100 * n
        ):  # the prior, where veins allow
            continue
        src = Source(
            kind="cmb",
            points=mni[None],
            radius_mm=radius,
            chi_ppm=chi,
            pd_scale=float(rng.uniform(0.6, 1.0)),
            r2s_extra=float(rng.uniform(50, 250)),
            label=len(existing) + len(out) + 1,
            extra={"placed_touching_vein": True},
        )
        out.append(Lesion(src, mni, *labels))
    return out
