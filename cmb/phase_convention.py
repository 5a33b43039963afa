"""The sign of a paramagnetic phase shift in a scan's phase: by vendor, measured on its veins, and the rule that decides.

A paramagnetic source (microbleed, vein) shifts the gradient-echo phase one way
and a diamagnetic one (calcification) the other, but which way is positive
depends on the scanner, the reconstruction and the converter, so a multi-vendor
cohort cannot use one setting for all its subjects, and a vendor rule alone does
not notice a phase that a converter flipped.

The vendor rule
---------------
:func:`vendor_paramagnetic_phase` reads the ``Manufacturer`` of the input's JSON
sidecar (copied into the ingest report, ``metadata.Manufacturer``):

===============================  ==========================
Manufacturer (case-insensitive)  paramagnetic phase shift
===============================  ==========================
``Siemens...``                   negative
``Philips...``                   negative
``GE...``, ``General Electric``  positive
===============================  ==========================

This is the convention of the SWI literature (right-handed Siemens and Philips
phase: veins dark; GE's left-handed phase: veins bright) and of ``cmb synth``.

The data estimate
-----------------
Veins are paramagnetic (deoxyhaemoglobin) and every scan has them.
:func:`estimate_paramagnetic_phase` finds thin, elongated dark structures of the
magnitude (relative darkness against a 1.5 mm tissue background, CSF left out of
the background; at least 4 mm and 4 voxels long, 3 times longer than wide, at most
3 mm wide; more than 4 mm inside the brain mask, away from air-tissue artefacts)
and asks whether the high-pass phase around them looks like the field of a
*positive* or of a *negative* susceptibility in those shapes.

The phase *inside* a vein is not enough: the field inside a cylinder is
``dchi (3 cos^2 theta - 1) / 6``, opposite for veins across B0 and along it, and
voxels elongated along B0 (2-5 mm slices) average in the outside lobes. Measured
on the simulated cohorts (docs/phase.md), the median phase inside the veins gives
the wrong sign on most 1.5 T and 3 T GRE scans. The estimate therefore correlates
the measured phase with the field the veins would make: the score of vein ``c`` is
``t_c = sum over its voxels of darkness * (D * phase)``, with ``D`` the unit
dipole kernel for B0 along the scanner's z axis (:mod:`cmb.dipole_field`); ``D`` is
its own adjoint, and ``D^2 >= 0``, so for any vein orientation a vein's score has
the sign of its susceptibility in the phase's convention.

**Confidence** is a z-score against random placements: the same vein voxels are
shifted rigidly (200 shifts of at least 8 mm, fixed seed, landing inside the
brain) and scored on the same phase; ``z = (T - mean(null)) / sd(null)`` with
``T = sum t_c``. On phase unrelated to the veins (rolled or noise), ``|z|`` stayed
below 2.5 (docs/phase.md). The estimate is *confident* when ``|z| >= 3`` with at
least 3 veins. Also reported: ``agreement`` (fraction of veins whose own score has
the estimated sign), the number of veins and voxels, and the median phase inside
the veins (a diagnostic only).

The decision
------------
:func:`resolve_paramagnetic_phase`, with ``preprocess.paramagnetic_phase``:

- ``positive`` or ``negative``: used as set. A confident estimate that disagrees
  is logged and flagged ``phase_convention_mismatch``, but does not change it.
- ``auto`` with a known vendor: the vendor rule, confirmed by a confident
  estimate that agrees. A confident estimate that disagrees wins, with the flag
  ``phase_convention_mismatch`` and a warning; an unconfident one keeps the
  vendor rule, with the flag ``phase_convention_unconfident``.
- ``auto`` without a known vendor (Canon, United Imaging, a stripped sidecar): a
  confident estimate decides, with a warning; otherwise the subject stops with a
  message that names the file, the reason and the setting.

Both estimates, the agreement, the decision and the flags go into the phase
sidecar (``PhaseConvention``), the preprocessing report and log, the subject page
and the cohort CSV.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi

from cmb.dipole_field import b0_in_index_frame, field_from_chi
from cmb.failures import InputDataError

__all__ = [
    "PHASE_SETTINGS",
    "VENDOR_PARAMAGNETIC_PHASE",
    "MISMATCH_FLAG",
    "UNCONFIDENT_FLAG",
    "DEFAULT_PHASE_SIGN_CHECK",
    "PhaseSignEstimate",
    "PhaseConventionDecision",
    "vendor_paramagnetic_phase",
    "estimate_paramagnetic_phase",
    "resolve_paramagnetic_phase",
    "manufacturer_from_report",
    "read_phase_convention",
    "phase_convention_columns",
    "pooled_paramagnetic_phase",
    "cohort_phase_columns",
]

#: Accepted values of ``paramagnetic_phase``.
PHASE_SETTINGS = ("auto", "positive", "negative")

#: Sign of a paramagnetic phase shift per vendor (keys: the vendor patterns below).
VENDOR_PARAMAGNETIC_PHASE = {"Siemens": "negative", "Philips": "negative", "GE": "positive"}

#: QC flag: a confident data estimate disagrees with the vendor rule (or with the configured sign).
MISMATCH_FLAG = "phase_convention_mismatch"
#: QC flag: ``auto`` kept the vendor rule because the data estimate was not confident.
UNCONFIDENT_FLAG = "phase_convention_unconfident"
#: QC flag: the sign used differs from the pooled estimate of the scans of the same site and
#: scanner (:func:`pooled_paramagnetic_phase`).
COHORT_MISMATCH_FLAG = "phase_convention_cohort_mismatch"

#: Settings of :func:`estimate_paramagnetic_phase` (its docstring says what each does).
DEFAULT_PHASE_SIGN_CHECK = {
    "edge_mm": 4.0,
    "background_mm": 1.5,
    "csf_level": 1.3,
    "darkness": 0.12,
    "min_length_mm": 4.0,
    "min_voxels_along": 4,
    "min_elongation": 3.0,
    "max_width_mm": 3.0,
    "n_placements": 200,
    "min_shift_mm": 8.0,
    "min_placements": 20,
    "min_z": 3.0,
    "min_veins": 3,
    "seed": 0,
}

_SIGNS = {1: "positive", -1: "negative"}

_VENDOR_PATTERNS = (
    ("Siemens", re.compile(r"^\s*siemens\b", re.IGNORECASE)),
    ("Philips", re.compile(r"^\s*philips\b", re.IGNORECASE)),
    ("GE", re.compile(r"^\s*(ge\b|general\s+electric\b)", re.IGNORECASE)),
)


def _vendor(manufacturer: str | None) -> str | None:
    """The vendor key of a DICOM Manufacturer string, or ``None``.

    >>> [_vendor(m) for m in ("SIEMENS", "Philips Medical Systems", "GE MEDICAL SYSTEMS", "Canon", None)]
    ['Siemens', 'Philips', 'GE', None, None]
    """
    if not isinstance(manufacturer, str):
        return None
    for vendor, pattern in _VENDOR_PATTERNS:
        if pattern.match(manufacturer):
            return vendor
    return None


def vendor_paramagnetic_phase(manufacturer: str | None) -> tuple[str | None, str | None]:
    """``(vendor, sign)`` of a DICOM ``Manufacturer`` by the vendor rule; ``(None, None)`` if unknown.

    >>> vendor_paramagnetic_phase("Philips Medical Systems"), vendor_paramagnetic_phase("Canon Medical Systems")
    (('Philips', 'negative'), (None, None))
    """
    vendor = _vendor(manufacturer)
    return (vendor, VENDOR_PARAMAGNETIC_PHASE[vendor]) if vendor else (None, None)


# --------------------------------------------------------------------------- data estimate


@dataclass(frozen=True)
class PhaseSignEstimate:
    """The sign of a paramagnetic shift measured on a scan's veins (:func:`estimate_paramagnetic_phase`).

    Attributes
    ----------
    paramagnetic_phase : {"positive", "negative"} or None
        The estimated sign in the phase given (``None``: no vein found, or no contrast).
    z : float
        Vein-field score in standard deviations of its random-placement null; the
        sign is the estimate's (> 0: paramagnetic positive).
    confident : bool
        ``|z| >= min_z`` with at least ``min_veins`` veins and ``min_placements`` placements.
    agreement : float or None
        Fraction of veins whose own score has the estimated sign.
    n_veins, n_voxels, n_placements : int
        Vein segments and voxels used; random placements in the null.
    interior_phase_rad : float or None
        Median over veins of the median phase inside them (diagnostic: not a reliable sign).
    min_z : float
        The confidence threshold used.
    note : str
        One line: what was measured, or why it is not confident.
    name : str
        The phase file it was measured on (for messages).
    vein_angle_b0_deg, vein_interior_rad, vein_score : tuple of float
        Per vein: angle of its long axis to B0, median phase inside it, and its
        score ``t_c`` (diagnostics; not in :meth:`to_dict`).
    """

    paramagnetic_phase: str | None
    z: float
    confident: bool
    agreement: float | None
    n_veins: int
    n_voxels: int
    n_placements: int
    interior_phase_rad: float | None
    min_z: float
    note: str
    name: str = "phase"
    vein_angle_b0_deg: tuple[float, ...] = field(default=(), repr=False)
    vein_interior_rad: tuple[float, ...] = field(default=(), repr=False)
    vein_score: tuple[float, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict:
        """JSON-ready summary (floats rounded; the per-vein tuples are left out)."""
        out = asdict(self)
        for key in ("vein_angle_b0_deg", "vein_interior_rad", "vein_score"):
            del out[key]
        out["z"] = round(float(self.z), 2)
        out["agreement"] = None if self.agreement is None else round(float(self.agreement), 3)
        out["interior_phase_rad"] = (
            None if self.interior_phase_rad is None else round(float(self.interior_phase_rad), 4)
        )
        out["method"] = (
            "vein field: darkness-weighted dipole field of dark tubular structures correlated with the "
            "high-pass phase; z against random rigid placements of the same veins"
        )
        return out


def _zooms(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(0))


def _relative_darkness(
    mag: np.ndarray, mask: np.ndarray, zooms: np.ndarray, background_mm: float, csf_level: float
) -> np.ndarray:
    """``1 - magnitude / tissue background`` in the mask (0 elsewhere and where brighter).

    The background is a Gaussian mean (``background_mm``) over tissue voxels only:
    voxels brighter than ``csf_level`` times the brain median (CSF on T2*-weighted
    images) are left out, so tissue next to a ventricle does not look dark. In-plane
    voxels finer than 0.7 mm are smoothed by 0.35 mm against noise.
    """
    brain = mag[mask]
    tissue = mask & (mag <= csf_level * float(np.median(brain)))
    w_tissue = tissue.astype(np.float32)
    sigma = background_mm / zooms
    bg = ndi.gaussian_filter(mag * w_tissue, sigma, mode="nearest", truncate=3.0)
    w = ndi.gaussian_filter(w_tissue, sigma, mode="nearest", truncate=3.0)
    smooth = ndi.gaussian_filter(mag, 0.35 / zooms * (zooms < 0.7), mode="nearest")
    d = 1.0 - smooth / np.maximum(bg / np.maximum(w, 1e-3), 1e-6)
    return np.where(mask & (w > 0.3), np.clip(d, 0.0, None), 0.0).astype(np.float32)


def _vein_segments(
    dark: np.ndarray, zooms: np.ndarray, s: dict
) -> tuple[np.ndarray, list[int], list[np.ndarray]]:
    """Label the connected dark structures; the labels and long axes (voxel frame, mm) of the veins."""
    # lazy: envs/report.yaml has no cc3d, and the report stage reads sidecars with this module
    import cc3d

    labels, n = cc3d.connected_components(dark, connectivity=26, return_N=True)
    if n == 0:
        return labels, [], []
    sizes = np.bincount(labels.ravel())
    kept, axes = [], []
    for c, sl in enumerate(ndi.find_objects(labels), 1):
        if sl is None or sizes[c] < s["min_voxels_along"]:
            continue
        mm = np.argwhere(labels[sl] == c) * zooms
        cov = np.cov(mm.T, bias=True) + np.diag(zooms**2 / 12.0)  # a voxel is a box, not a point
        axis = np.linalg.eigh(cov)[1][:, -1]
        t = mm @ axis
        step = float(np.abs(axis) @ zooms)  # one voxel's length along the axis
        length = float(t.max() - t.min()) + step
        width = 2.0 * math.sqrt(sizes[c] * float(np.prod(zooms)) / (math.pi * length))
        if (
            length >= s["min_length_mm"]
            and length / step >= s["min_voxels_along"]
            and length >= s["min_elongation"] * width
            and width <= s["max_width_mm"]
        ):
            kept.append(c)
            axes.append(axis)
    return labels, kept, axes


def estimate_paramagnetic_phase(
    magnitude: np.ndarray,
    highpass_phase: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    settings: dict | None = None,
    name: str = "phase",
) -> PhaseSignEstimate:
    """Which sign a paramagnetic shift has in ``highpass_phase``, from the veins of ``magnitude``.

    Parameters
    ----------
    magnitude : (X, Y, Z) ndarray
        Bias-corrected magnitude (any scale).
    highpass_phase : (X, Y, Z) ndarray
        High-pass filtered phase (radians) *as stored*, not flipped to a convention.
    mask : (X, Y, Z) bool ndarray
        Brain mask.
    affine : (4, 4) ndarray
        Voxel to scanner coordinates (mm); B0 is the scanner's z axis.
    settings : dict, optional
        Overrides of :data:`DEFAULT_PHASE_SIGN_CHECK`: ``edge_mm`` (brain edge left out),
        ``background_mm`` and ``csf_level`` (relative darkness), ``darkness`` (vein
        voxels), ``min_length_mm``, ``min_voxels_along``, ``min_elongation``,
        ``max_width_mm`` (vein shape), ``n_placements``, ``min_shift_mm``, ``seed``
        (the null), ``min_placements``, ``min_z``, ``min_veins`` (confidence).
    name : str, optional
        The phase file, for messages.

    Returns
    -------
    PhaseSignEstimate

    Examples
    --------
    A straight dark vein across B0 and one along it, with the phase of their
    field for a paramagnetic-positive convention:

    >>> from cmb.dipole_field import field_from_chi
    >>> g = np.indices((48, 48, 48)).astype(float)
    >>> chi = np.zeros((48, 48, 48), np.float32)
    >>> chi[10:38, 20, 22] = chi[30, 28, 8:40] = 1.0
    >>> mag = 1.0 - 0.6 * ndi.gaussian_filter(chi, 0.5) / ndi.gaussian_filter(chi, 0.5).max()
    >>> phase = 3.0 * field_from_chi(chi, (1, 1, 1), (0, 0, 1))
    >>> mask = ((g - 23.5) ** 2).sum(0) < 23 ** 2
    >>> est = estimate_paramagnetic_phase(mag, phase, mask, np.eye(4))
    >>> est.paramagnetic_phase, est.n_veins, est.confident
    ('positive', 2, False)
    >>> estimate_paramagnetic_phase(mag, -phase, mask, np.eye(4)).paramagnetic_phase
    'negative'

    (Two veins are fewer than ``min_veins``: the sign is right, but not confident.)
    """
    s = {**DEFAULT_PHASE_SIGN_CHECK, **(settings or {})}
    mag = np.nan_to_num(np.asarray(magnitude, np.float32))
    hp = np.nan_to_num(np.asarray(highpass_phase, np.float32))
    mask = np.asarray(mask, bool)
    zooms = _zooms(affine)
    if mag.shape != hp.shape or mag.shape != mask.shape:
        raise ValueError(
            f"{name}: magnitude {mag.shape}, phase {hp.shape} and mask {mask.shape} differ"
        )

    def result(sign, z, note, **kw) -> PhaseSignEstimate:
        fields = {
            "agreement": None,
            "n_veins": 0,
            "n_voxels": 0,
            "n_placements": 0,
            "interior_phase_rad": None,
        }
        fields.update(kw)
        confident = (
            sign is not None
            and abs(z) >= s["min_z"]
            and fields["n_veins"] >= s["min_veins"]
            and fields["n_placements"] >= s["min_placements"]
        )
        return PhaseSignEstimate(
            sign, float(z), bool(confident), min_z=float(s["min_z"]), note=note, name=name, **fields
        )

    if not mask.any():
        return result(None, 0.0, "empty brain mask")
    inner = (
        ndi.distance_transform_edt(np.pad(mask, 1), sampling=zooms)[1:-1, 1:-1, 1:-1] > s["edge_mm"]
    )
    darkness = _relative_darkness(mag, mask, zooms, s["background_mm"], s["csf_level"])
    labels, veins, axes = _vein_segments(inner & (darkness > s["darkness"]), zooms, s)
    if not veins:
        return result(
            None,
            0.0,
            f"no dark tubular structure (vein) found more than {s['edge_mm']:g} mm inside "
            "the brain mask",
        )
    lut = np.zeros(int(labels.max()) + 1, np.int64)
    lut[veins] = np.arange(1, len(veins) + 1)
    vein_id = lut[labels]
    vox = np.argwhere(vein_id > 0)
    ids = vein_id[tuple(vox.T)] - 1
    weight = darkness[tuple(vox.T)].astype(np.float64)
    interior_each = np.asarray(ndi.median(hp, vein_id, index=np.arange(1, len(veins) + 1)), float)
    b0 = b0_in_index_frame(affine)
    angles = np.degrees(np.arccos(np.clip(np.abs(np.asarray(axes) @ b0), 0.0, 1.0)))
    # the veins' field, seen through the measured phase: D is its own adjoint
    vein_field = field_from_chi(np.where(mask, hp, 0.0).astype(np.float32), zooms, b0)
    vein_field[~inner] = 0.0
    per_vein = np.bincount(ids, weights=weight * vein_field[tuple(vox.T)], minlength=len(veins))
    total = float(per_vein.sum())

    rng = np.random.default_rng(int(s["seed"]))
    shape = np.asarray(mask.shape)
    null = []
    for _ in range(20 * int(s["n_placements"])):
        if len(null) >= s["n_placements"]:
            break
        shift = rng.integers(-(shape // 2), shape // 2 + 1)
        if np.linalg.norm(shift * zooms) < s["min_shift_mm"]:
            continue
        moved = vox + shift
        ok = np.all((moved >= 0) & (moved < shape), axis=1)
        ok[ok] = inner[tuple(moved[ok].T)]
        if ok.mean() < 0.5:
            continue
        null.append(float(np.sum(weight[ok] * vein_field[tuple(moved[ok].T)])) / float(ok.mean()))
    common = {
        "n_veins": len(veins),
        "n_voxels": int(len(vox)),
        "n_placements": len(null),
        "interior_phase_rad": float(np.median(interior_each)),
        "vein_angle_b0_deg": tuple(float(a) for a in angles),
        "vein_interior_rad": tuple(float(v) for v in interior_each),
        "vein_score": tuple(float(t) for t in per_vein),
    }
    if len(null) < 2 or not np.std(null) > 0:
        return result(
            None,
            0.0,
            f"{len(veins)} vein(s), but no random placement to compare them with",
            **common,
        )
    z = (total - float(np.mean(null))) / float(np.std(null))
    sign = _SIGNS.get(int(np.sign(z)))
    agreement = float(np.mean(np.sign(per_vein) == np.sign(z))) if sign else None
    est = result(sign, z, "", agreement=agreement, **common)
    why = []
    if abs(z) < s["min_z"]:
        why.append(f"|z| {abs(z):.2f} < {s['min_z']:g}")
    if len(veins) < s["min_veins"]:
        why.append(f"{len(veins)} vein(s) < {s['min_veins']}")
    if len(null) < s["min_placements"]:
        why.append(f"{len(null)} random placement(s) < {s['min_placements']} (small field of view)")
    note = (
        f"{len(veins)} vein(s), {len(vox)} voxels: paramagnetic {sign}, z = {z:+.2f}, "
        f"{100 * (agreement or 0):.0f}% of veins agree"
        + (f"; not confident: {', '.join(why)}" if why else "")
    )
    return PhaseSignEstimate(**{**asdict(est), "note": note})


# --------------------------------------------------------------------------- decision


@dataclass(frozen=True)
class PhaseConventionDecision:
    """The sign used for a scan's phase, where it came from, and the QC flags.

    Attributes
    ----------
    paramagnetic_phase : {"positive", "negative"}
        The sign of a paramagnetic shift in the input phase, as used.
    source : {"configuration", "vendor", "data"}
        What decided it.
    setting : str
        ``preprocess.paramagnetic_phase``.
    manufacturer, vendor, vendor_paramagnetic_phase : str or None
        The sidecar's Manufacturer, its vendor key and the vendor rule's sign.
    estimate : PhaseSignEstimate or None
        The data estimate (``None``: not measured).
    agreement : str
        Data estimate against the reference (the configured sign, else the vendor
        rule): ``agree``, ``disagree``, ``unconfident``, ``not_estimated`` or
        ``no_vendor_rule`` (auto without a known vendor).
    flags : tuple of str
        :data:`MISMATCH_FLAG`, :data:`UNCONFIDENT_FLAG`, or none.
    reason : str
        One line for the log and the sidecar.
    warnings : tuple of str
        Lines to log as warnings.
    """

    paramagnetic_phase: str
    source: str
    setting: str
    manufacturer: str | None
    vendor: str | None
    vendor_paramagnetic_phase: str | None
    estimate: PhaseSignEstimate | None
    agreement: str
    flags: tuple[str, ...] = ()
    reason: str = ""
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def mismatch(self) -> bool:
        """Whether a confident data estimate disagreed with the reference."""
        return MISMATCH_FLAG in self.flags

    def to_dict(self) -> dict:
        """JSON-ready form (the ``PhaseConvention`` entry of the phase sidecar)."""
        out = asdict(self)
        out["estimate"] = None if self.estimate is None else self.estimate.to_dict()
        out["flags"] = list(self.flags)
        out["warnings"] = list(self.warnings)
        out["mismatch"] = self.mismatch
        return out


def resolve_paramagnetic_phase(
    setting: str,
    manufacturer: str | None = None,
    source: str | os.PathLike = "input",
    estimate: PhaseSignEstimate | None = None,
) -> PhaseConventionDecision:
    """Decide the sign of a paramagnetic shift in a scan's phase (rules in the module docstring).

    Parameters
    ----------
    setting : {"auto", "positive", "negative"}
        ``preprocess.paramagnetic_phase``.
    manufacturer : str, optional
        The input's ``Manufacturer`` (JSON sidecar).
    source : path or str, optional
        Where ``manufacturer`` was read, for messages.
    estimate : PhaseSignEstimate, optional
        The data estimate (:func:`estimate_paramagnetic_phase`).

    Raises
    ------
    ValueError
        ``setting`` is not one of :data:`PHASE_SETTINGS`.
    cmb.failures.InputDataError
        ``"auto"`` with a missing or unknown manufacturer and no confident estimate;
        the message names ``source`` (and the phase measured) and the setting.

    Examples
    --------
    >>> resolve_paramagnetic_phase("auto", "SIEMENS").paramagnetic_phase
    'negative'
    >>> resolve_paramagnetic_phase("auto", "GE MEDICAL SYSTEMS").reason
    "auto: Manufacturer 'GE MEDICAL SYSTEMS' (GE): paramagnetic phase positive; not measured on the data"
    >>> flipped = PhaseSignEstimate("positive", 7.5, True, 0.9, 20, 600, 200, 0.1, 3.0, "")
    >>> d = resolve_paramagnetic_phase("auto", "SIEMENS", estimate=flipped)
    >>> d.paramagnetic_phase, d.source, d.flags
    ('positive', 'data', ('phase_convention_mismatch',))
    >>> resolve_paramagnetic_phase("negative", "GE", estimate=flipped).paramagnetic_phase
    'negative'
    """
    if setting not in PHASE_SETTINGS:
        raise ValueError(f"paramagnetic_phase must be one of {PHASE_SETTINGS}, not {setting!r}")
    vendor, vendor_sign = vendor_paramagnetic_phase(manufacturer)
    data_sign = estimate.paramagnetic_phase if estimate is not None and estimate.confident else None
    measured = (
        "not measured on the data"
        if estimate is None
        else f"data: {estimate.note}"
        if estimate.note
        else f"data: paramagnetic {estimate.paramagnetic_phase}"
    )
    common = {
        "setting": setting,
        "manufacturer": manufacturer,
        "vendor": vendor,
        "vendor_paramagnetic_phase": vendor_sign,
        "estimate": estimate,
    }

    def compare(reference: str) -> str:
        if estimate is None:
            return "not_estimated"
        if data_sign is None:
            return "unconfident"
        return "agree" if data_sign == reference else "disagree"

    if setting != "auto":
        agreement = compare(setting)
        flags, warnings = (), ()
        if agreement == "disagree":
            flags = (MISMATCH_FLAG,)
            warnings = (
                f"{source}: paramagnetic_phase is set to {setting}, but the veins say {data_sign} "
                f"({estimate.note}); the setting is kept",
            )
        return PhaseConventionDecision(
            setting,
            "configuration",
            agreement=agreement,
            flags=flags,
            reason=f"set to {setting} in the configuration; {measured}",
            warnings=warnings,
            **common,
        )
    if vendor is not None:
        rule = f"auto: Manufacturer {manufacturer!r} ({vendor}): paramagnetic phase {vendor_sign}"
        agreement = compare(vendor_sign)
        if agreement == "disagree":
            warning = (
                f"{source}: the vendor rule says paramagnetic {vendor_sign} ({vendor}), the veins say "
                f"{data_sign} ({estimate.note}): following the data (phase_convention_mismatch)"
            )
            return PhaseConventionDecision(
                data_sign,
                "data",
                agreement=agreement,
                flags=(MISMATCH_FLAG,),
                reason=f"{rule}, overruled by the {measured}",
                warnings=(warning,),
                **common,
            )
        flags = (UNCONFIDENT_FLAG,) if agreement in ("unconfident", "not_estimated") else ()
        return PhaseConventionDecision(
            vendor_sign,
            "vendor",
            agreement=agreement,
            flags=flags,
            reason=f"{rule}; {measured}",
            **common,
        )
    what = (
        "no Manufacturer"
        if manufacturer in (None, "")
        else f"Manufacturer {manufacturer!r} has no known phase sign"
    )
    if data_sign is not None:
        warning = f"{source}: {what}: the sign is taken from the veins (paramagnetic {data_sign}; {estimate.note})"
        return PhaseConventionDecision(
            data_sign,
            "data",
            agreement="no_vendor_rule",
            reason=f"auto: {what}; {measured}",
            warnings=(warning,),
            **common,
        )
    why = (
        "the data were not measured"
        if estimate is None
        else f"the veins of {estimate.name} do not tell it either ({estimate.note})"
    )
    raise InputDataError(
        f"{source}: {what}, and {why}, so paramagnetic_phase: auto cannot tell the phase sign convention; "
        f"set preprocess.paramagnetic_phase to positive or negative for this data "
        f"(known: {', '.join(f'{k} {v}' for k, v in VENDOR_PARAMAGNETIC_PHASE.items())})"
    )


def manufacturer_from_report(path: str | os.PathLike) -> str | None:
    """``metadata.Manufacturer`` of an ingest report (``cmb.ingest``), or ``None``.

    Raises
    ------
    cmb.failures.InputDataError
        The report cannot be read as JSON.
    """
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputDataError(
            f"{path}: cannot read the ingest report ({type(exc).__name__}: {exc})"
        ) from exc
    meta = report.get("metadata") if isinstance(report, dict) else None
    value = meta.get("Manufacturer") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


# --------------------------------------------------------------------------- reading it back


def read_phase_convention(phase_image: str | os.PathLike) -> dict | None:
    """The ``PhaseConvention`` entry of a preprocessed phase's JSON sidecar (same name, ``.json``).

    ``None`` when the sidecar is missing, an empty placeholder or has no entry.
    """
    path = os.fspath(phase_image)
    stem = path[:-7] if path.endswith(".nii.gz") else path[:-4] if path.endswith(".nii") else path
    try:
        with open(stem + ".json", encoding="utf-8") as f:
            text = f.read()
        meta = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    conv = meta.get("PhaseConvention") if isinstance(meta, dict) else None
    return conv if isinstance(conv, dict) else None


def phase_convention_columns(convention: dict | None) -> dict:
    """The cohort-table columns of a ``PhaseConvention`` entry (``n/a`` without one: no phase).

    >>> d = resolve_paramagnetic_phase("auto", "SIEMENS", estimate=PhaseSignEstimate(
    ...     "positive", 7.5, True, 0.9, 20, 600, 200, 0.1, 3.0, ""))
    >>> c = phase_convention_columns(d.to_dict())
    >>> c["paramagnetic_phase"], c["phase_sign_source"], c["phase_convention_mismatch"], c["phase_sign_z"]
    ('positive', 'data', 'true', '7.50')
    >>> phase_convention_columns(None)["phase_convention_mismatch"]
    'n/a'
    """
    na = "n/a"
    if not convention:
        return {
            k: na
            for k in (
                "paramagnetic_phase",
                "phase_sign_source",
                "phase_sign_vendor",
                "phase_sign_data",
                "phase_sign_z",
                "phase_sign_agreement",
                "phase_convention_mismatch",
                "phase_convention_unconfident",
            )
        }
    est = convention.get("estimate") or {}
    z = est.get("z")
    flags = convention.get("flags") or []
    return {
        "paramagnetic_phase": convention.get("paramagnetic_phase") or na,
        "phase_sign_source": convention.get("source") or na,
        "phase_sign_vendor": convention.get("vendor_paramagnetic_phase") or na,
        "phase_sign_data": (
            na
            if not est
            else (est.get("paramagnetic_phase") or na)
            if est.get("confident")
            else "unconfident"
        ),
        "phase_sign_z": na if z is None else f"{float(z):.2f}",
        "phase_sign_agreement": convention.get("agreement") or na,
        "phase_convention_mismatch": "true" if MISMATCH_FLAG in flags else "false",
        "phase_convention_unconfident": "true" if UNCONFIDENT_FLAG in flags else "false",
    }


def pooled_paramagnetic_phase(
    z_scores: Sequence[float], min_z: float = DEFAULT_PHASE_SIGN_CHECK["min_z"]
) -> tuple[str | None, float | None, str]:
    """The phase sign that several scans of one convention (a site's scanner, its
    reconstruction and converter) show together.

    A phase convention belongs to the scanner and the software that wrote the files, not to
    one scan, so scans that share them can decide together where one alone is unconfident (a
    1.5 T scan with few veins). Their z-scores (:func:`estimate_paramagnetic_phase`, positive:
    paramagnetic positive) are independent, and pool as Stouffer's ``sum z / sqrt(n)``. The
    group decides when at least two scans were measured, ``|pooled z| >= min_z``, and no
    scan's own confident estimate (``|z| >= min_z``) says the other sign: a group whose scans
    confidently disagree holds two conventions, and has none.

    Returns (sign or None, pooled z or None, the reason).

    >>> sign, z, reason = pooled_paramagnetic_phase([2.8, 5.6, 7.5])
    >>> sign, round(z, 2), reason
    ('positive', 9.18, 'pooled z 9.18 of 3 scans')
    >>> pooled_paramagnetic_phase([-7.0, 6.0])[2]
    'pooled z -0.71 of 2 scans is below 3'
    >>> pooled_paramagnetic_phase([8.0, 8.0, -3.5])[::2]
    (None, 'the 3 scans confidently disagree (two conventions)')
    >>> pooled_paramagnetic_phase([2.0])[2]
    'one scan measured'
    """
    z = np.asarray([v for v in z_scores if v is not None and np.isfinite(v)], float)
    if len(z) < 2:
        return None, None, "one scan measured" if len(z) else "no scan measured"
    pooled = float(z.sum() / np.sqrt(len(z)))
    if abs(pooled) < min_z:
        return None, pooled, f"pooled z {pooled:.2f} of {len(z)} scans is below {min_z:g}"
    sign = 1 if pooled > 0 else -1
    if (z * sign <= -min_z).any():
        return None, pooled, f"the {len(z)} scans confidently disagree (two conventions)"
    return _SIGNS[sign], pooled, f"pooled z {pooled:.2f} of {len(z)} scans"


def cohort_phase_columns(rows: Sequence[dict], group_keys: Sequence[str]) -> list[dict]:
    """Per row of a cohort table (the :func:`phase_convention_columns` of each scan, and the
    ``group_keys``), the columns of its group's pooled sign: ``phase_sign_cohort``,
    ``phase_sign_cohort_z``, ``phase_sign_cohort_scans`` and
    ``phase_convention_cohort_mismatch`` (``true`` when the sign used differs from the
    group's). Rows without phase get ``n/a``.

    >>> rows = [{"site": "A", "paramagnetic_phase": "negative", "phase_sign_z": z}
    ...         for z in ("2.76", "5.64", "7.52")]
    >>> [r["phase_convention_cohort_mismatch"] for r in cohort_phase_columns(rows, ["site"])]
    ['true', 'true', 'true']
    """
    na = "n/a"

    def z_of(row):
        try:
            return float(row.get("phase_sign_z"))
        except (TypeError, ValueError):
            return None

    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        if row.get("paramagnetic_phase", na) != na:
            groups.setdefault(tuple(str(row.get(k, na)) for k in group_keys), []).append(i)
    out = [
        {
            "phase_sign_cohort": na,
            "phase_sign_cohort_z": na,
            "phase_sign_cohort_scans": na,
            COHORT_MISMATCH_FLAG: na,
        }
        for _ in rows
    ]
    for members in groups.values():
        sign, pooled, _ = pooled_paramagnetic_phase([z_of(rows[i]) for i in members])
        for i in members:
            out[i] = {
                "phase_sign_cohort": sign or "undecided",
                "phase_sign_cohort_z": na if pooled is None else f"{pooled:.2f}",
                "phase_sign_cohort_scans": str(len(members)),
                COHORT_MISMATCH_FLAG: (
                    "false" if sign is None or sign == rows[i]["paramagnetic_phase"] else "true"
                ),
            }
    return out
