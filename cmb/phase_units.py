"""Detect the units of a phase image and rescale it to radians in [-pi, pi).

Scanners and converters store phase in many ways. :func:`detect_phase_units`
looks at the value range of the finite voxels (the 0.1th and 99.9th
percentiles, so that a few outliers do not decide; outliers are wrapped into
[-pi, pi) and counted in the description) and applies the first rule that matches:

==========================  ==================================================  =========================
name                        range                                               conversion
==========================  ==================================================  =========================
``radians``                 within [-pi, pi], spanning at least +-pi/4          none (pi wraps to -pi)
``radians-0-2pi``           within [0, 2pi], reaching past 1.5 pi               wrapped into [-pi, pi)
``degrees``                 within [-180, 180], reaching past +-90              x pi/180
``degrees-0-360``           within [0, 360], reaching past 270                  x pi/180, wrapped
``milliradians``            within +-1000 pi, reaching past 950 pi              x 1/1000
``integer``                 integer values, range wider than 360                nominal bit range -> [-pi, pi)
``scaled``                  symmetric about 0, filling the range to both ends  +-max -> +-pi
==========================  ==================================================  =========================

``integer`` uses the smallest power-of-two range that holds the data, as stored
by Siemens and dcm2niix: ``0..4095`` maps ``(x - 2048) * pi / 2048``;
``-4096..4095`` maps ``x * pi / 4096``; ``-2048..2047`` maps ``x * pi / 2048``.
``scaled`` covers odd scalings such as +-0.0036744 (radians / 855): a wrapped phase
fills its cycle almost uniformly, so the observed symmetric range is taken to be
one full cycle. It is only used when at least 0.1% of voxels lie in each outer
tenth of the range and at least 20% beyond half of it (a uniform wrapped phase
has 50%; a phase bunched near 0 is refused). The hard maximum is the cycle's end
unless it exceeds the 99.9th percentile by more than 5%, so a few outliers cannot
shrink the whole image.
An already filtered phase stored in odd units cannot be told apart from this
case: force ``units`` for such data. Detect on all echoes of a multi-echo phase
together: a short first echo alone may not fill its range.

``integer`` is only used when the data fill that range (the 0.1th and 99.9th
percentiles within 10% of both ends, as a wrapped phase does): an integer phase
that does not fill it, such as a filtered phase bunched near 0, would be scaled by
the wrong power of two, so it is refused with the reason.

The sidecar decides where the range cannot (``metadata=``, the phase image's JSON
sidecar): GE stores phase as integer milliradians (radians x 1000, within
+-3142). Its filtered phase (``FILT_PHA`` in ``ImageType``, the SWAN/SWI filtered
phase series) rarely reaches +-pi, so by range alone it looked like a 12-bit
+-1024 or +-2048 phase and came out about 3 times too large (pi / 1024 per unit
instead of 1 / 1000). With ``Manufacturer`` GE or ``FILT_PHA``, an integer phase
within +-3142 is read as milliradians whatever its range; a ``FILT_PHA`` phase
outside it is refused with the reason.

A constant (or 99.8%-constant) phase and a range that matches no rule raise
:class:`cmb.failures.InputDataError`; pass ``units=`` explicitly to override.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cmb.failures import InputDataError
from cmb.phase_convention import vendor_paramagnetic_phase

__all__ = [
    "UNITS",
    "PhaseScaling",
    "detect_phase_units",
    "phase_scaling",
    "rescale_phase",
    "wrap_to_pi",
]

#: Accepted values of ``units`` (``"auto"`` detects).
UNITS = (
    "auto",
    "radians",
    "radians-0-2pi",
    "degrees",
    "degrees-0-360",
    "milliradians",
    "integer",
    "scaled",
)

_PI32 = np.float32(np.pi)
_MAX_SAMPLE = 2_000_000
_TAIL_FRACTION = 0.001
_SPREAD_FRACTION = 0.2
_FILL_FRACTION = 0.9  # an integer phase must reach this fraction of its stored range at both ends
_GE_MILLIRADIANS = 1000 * math.pi + 1.0  # GE integer phase: radians x 1000


@dataclass(frozen=True)
class PhaseScaling:
    """A linear map to radians: ``wrap_to_pi((x - offset) * scale)``.

    Attributes
    ----------
    units : str
        One of :data:`UNITS` (never ``"auto"``).
    offset, scale : float
        The map.
    description : str
        One human-readable line: what was seen and what is done (logged).
    """

    units: str
    offset: float
    scale: float
    description: str

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Rescale ``values`` to float32 radians in [-pi, pi)."""
        x = np.asarray(values, dtype=np.float64)
        if self.offset != 0.0 or self.scale != 1.0:
            x = (x - self.offset) * self.scale
        return wrap_to_pi(x)


def wrap_to_pi(values: np.ndarray) -> np.ndarray:
    """Wrap angles (radians) into [-pi, pi), returned as float32.

    The half-open interval holds after the float32 cast too: no value equals
    ``np.float32(np.pi)``. Non-finite values pass through unchanged.

    >>> wrap_to_pi(np.array([np.pi, -np.pi, 3 * np.pi / 2, 0.5])).astype(float).round(4).tolist()
    [-3.1416, -3.1416, -1.5708, 0.5]
    """
    x = np.asarray(values, dtype=np.float64)
    out = (np.mod(x + np.pi, 2 * np.pi) - np.pi).astype(np.float32)
    out[out >= _PI32] = -_PI32
    return out


def _sample(values: np.ndarray) -> np.ndarray:
    flat = np.asarray(values).ravel()
    flat = flat[np.isfinite(flat)]
    if flat.size > _MAX_SAMPLE:
        flat = flat[:: math.ceil(flat.size / _MAX_SAMPLE)]
    return flat.astype(np.float64, copy=False)


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def _integer_scaling(mn: float, mx: float, rng: str) -> PhaseScaling:
    """Map the smallest power-of-two range holding [mn, mx] onto [-pi, pi)."""
    if mn >= 0:
        period = 2.0 ** math.ceil(math.log2(mx + 1))
        return PhaseScaling(
            "integer",
            period / 2,
            2 * np.pi / period,
            f"phase stored as raw integers {rng}: mapped 0..{int(period) - 1} to [-pi, pi) "
            f"as (x - {int(period // 2)}) * pi / {int(period // 2)}",
        )
    half = 2.0 ** math.ceil(math.log2(max(-mn, mx + 1)))
    return PhaseScaling(
        "integer",
        0.0,
        np.pi / half,
        f"phase stored as raw integers {rng}: mapped -{int(half)}..{int(half) - 1} "
        f"to [-pi, pi) as x * pi / {int(half)}",
    )


def _scaled(lo: float, hi: float, mn: float, mx: float, sample: np.ndarray) -> PhaseScaling | None:
    """The symmetric odd-scaling rule, or ``None`` if the data do not fit it."""
    width = hi - lo
    if width <= 0 or abs(hi + lo) > 0.1 * width:
        return None
    hard = max(-mn, mx)
    robust = max(-lo, hi)
    m = hard if hard <= 1.05 * robust else robust  # a few outliers wrap instead of shrinking all
    if np.mean(sample > 0.9 * m) < _TAIL_FRACTION or np.mean(sample < -0.9 * m) < _TAIL_FRACTION:
        return None  # does not reach both ends
    if np.mean(np.abs(sample) > 0.5 * m) < _SPREAD_FRACTION:
        return None  # bunched near 0 (uniform wrapped phase: 50%; a Gaussian: about 12%)
    factor = np.pi / m
    return PhaseScaling(
        "scaled",
        0.0,
        factor,
        f"phase range +-{_fmt(m)} matches no standard unit; it is symmetric and filled to "
        f"both ends like a wrapped phase, so it is taken as one cycle: multiplied by "
        f"pi/{_fmt(m)} = {_fmt(factor)}",
    )


def _image_type(metadata: Mapping) -> list[str]:
    value = metadata.get("ImageType")
    if isinstance(value, str):
        value = re.split(r"[\\/ ,]+", value)
    return [str(v).upper() for v in value] if isinstance(value, (list, tuple)) else []


def _sidecar_scaling(
    metadata: Mapping, lo: float, hi: float, rng: str, name: str
) -> PhaseScaling | None:
    """Milliradians for a GE integer phase (by ``Manufacturer`` or ``FILT_PHA``); ``None`` when the sidecar
    does not decide."""
    filtered = any("FILT_PHA" in t for t in _image_type(metadata))
    vendor = vendor_paramagnetic_phase(metadata.get("Manufacturer"))[0]
    if not filtered and vendor != "GE":
        return None
    what = "GE filtered phase (ImageType FILT_PHA)" if filtered else "GE phase (Manufacturer)"
    if lo >= -_GE_MILLIRADIANS and hi <= _GE_MILLIRADIANS:
        return PhaseScaling(
            "milliradians",
            0.0,
            1e-3,
            f"{what} is stored as integer radians x 1000: range {rng} multiplied by 1/1000",
        )
    if filtered:
        raise InputDataError(
            f"{name}: {what} is stored as integer radians x 1000, within +-3142, but 99.8% of it lies within "
            f"[{_fmt(lo)}, {_fmt(hi)}]; set the phase units explicitly (one of {', '.join(UNITS[1:])})"
        )
    return None  # a GE integer phase in another range: the range rules decide


def detect_phase_units(
    values: np.ndarray, name: str = "phase", metadata: Mapping | None = None
) -> PhaseScaling:
    """Find how ``values`` encode phase, by the rules of the module docstring.

    Parameters
    ----------
    values : ndarray
        The phase voxels (any shape); non-finite values are ignored.
    name : str, optional
        File name used in error messages.
    metadata : mapping, optional
        The phase image's JSON sidecar; ``Manufacturer`` and ``ImageType`` decide
        the units of a GE integer phase.

    Returns
    -------
    PhaseScaling

    Raises
    ------
    cmb.failures.InputDataError
        Constant phase, or a range that matches no rule.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> detect_phase_units(rng.uniform(-180, 180, 1000)).units
    'degrees'
    >>> detect_phase_units(rng.integers(0, 4096, 1000)).units
    'integer'
    >>> detect_phase_units(rng.uniform(-0.0036744, 0.0036744, 1000)).units
    'scaled'
    >>> ge = {"Manufacturer": "GE MEDICAL SYSTEMS", "ImageType": ["DERIVED", "PRIMARY", "FILT_PHA"]}
    >>> detect_phase_units(np.round(rng.normal(0, 300, 1000)), metadata=ge).scale
    0.001
    """
    s = _sample(values)
    if s.size == 0:
        raise InputDataError(f"{name}: phase image has no finite voxels")
    mn, mx = float(s.min()), float(s.max())
    if mx == mn:
        raise InputDataError(
            f"{name}: phase is constant (every voxel = {_fmt(mn)}); cannot detect its units"
        )
    lo, hi = (float(v) for v in np.percentile(s, [0.1, 99.9]))
    if hi == lo:
        raise InputDataError(
            f"{name}: phase is nearly constant (99.8% of voxels = {_fmt(lo)}); "
            "cannot detect its units"
        )
    reach = max(-lo, hi)
    rng = f"[{_fmt(mn)}, {_fmt(mx)}]"
    is_integer = bool(np.all(s == np.round(s)))
    if metadata and is_integer:
        by_sidecar = _sidecar_scaling(metadata, lo, hi, rng, name)
        if by_sidecar is not None:
            return by_sidecar

    def outside(a: float, b: float) -> str:
        n = int(np.count_nonzero((s < a) | (s > b)))
        return f"; {n} outlier voxel(s) outside [{_fmt(a)}, {_fmt(b)}] wrapped" if n else ""

    def within(a: float, b: float, tol: float) -> bool:
        return lo >= a - tol and hi <= b + tol

    if within(-np.pi, np.pi, 1e-3) and reach >= np.pi / 4:
        note = (
            ""
            if reach >= 0.9 * np.pi
            else f" (only reaches +-{_fmt(reach)}: filtered or unwrapped?)"
        )
        return PhaseScaling(
            "radians",
            0.0,
            1.0,
            f"phase range {rng} is radians already{note}" + outside(-np.pi - 1e-3, np.pi + 1e-3),
        )
    if within(0, 2 * np.pi, 1e-3) and hi >= 1.5 * np.pi:
        return PhaseScaling(
            "radians-0-2pi",
            0.0,
            1.0,
            f"phase range {rng} is radians in [0, 2pi): "
            "wrapped to [-pi, pi)" + outside(-1e-3, 2 * np.pi + 1e-3),
        )
    if within(-180, 180, 0.5) and reach >= 90:
        return PhaseScaling(
            "degrees",
            0.0,
            np.pi / 180,
            f"phase range {rng} is degrees: multiplied by pi/180" + outside(-180.5, 180.5),
        )
    if within(0, 360, 0.5) and hi >= 270:
        return PhaseScaling(
            "degrees-0-360",
            0.0,
            np.pi / 180,
            f"phase range {rng} is degrees in "
            "[0, 360): multiplied by pi/180 and wrapped to [-pi, pi)" + outside(-0.5, 360.5),
        )
    if within(-1000 * np.pi, 1000 * np.pi, 10 * np.pi) and reach >= 950 * np.pi:
        return PhaseScaling(
            "milliradians",
            0.0,
            1e-3,
            f"phase range {rng} is milliradians: "
            "multiplied by 1/1000" + outside(-1010 * np.pi, 1010 * np.pi),
        )
    if hi - lo > 360.5 and is_integer:
        scaling = _integer_scaling(math.floor(lo), math.ceil(hi), rng)
        a = scaling.offset - np.pi / scaling.scale
        b = scaling.offset + np.pi / scaling.scale - 1
        span = b + 1 - a
        if lo > a + (1 - _FILL_FRACTION) * span or hi < b + 1 - (1 - _FILL_FRACTION) * span:
            hint = ""
            if scaling.offset == 0.0 and reach <= _GE_MILLIRADIANS:
                hint = (
                    f"; if it is GE phase stored as radians x 1000 (a filtered phase, ImageType FILT_PHA), "
                    f"that range would scale it {1000 * scaling.scale:.2f} times too much: give the sidecar "
                    "(Manufacturer, ImageType) or set the units to milliradians"
                )
            raise InputDataError(
                f"{name}: integer phase over {rng} (99.8% within [{_fmt(lo)}, {_fmt(hi)}]) does not fill a stored "
                f"phase range (the nearest, {int(a)}..{int(b)}, would need at least {100 * _FILL_FRACTION:.0f}% "
                f"of it at both ends, as a wrapped phase has): filtered, masked or unwrapped phase cannot be "
                f"scaled by its range{hint}; set the phase units explicitly (one of {', '.join(UNITS[1:])})"
            )
        return dataclasses.replace(scaling, description=scaling.description + outside(a, b))
    scaled = _scaled(lo, hi, mn, mx, s)
    if scaled is not None:
        return scaled
    raise InputDataError(
        f"{name}: cannot tell the units of a phase ranging over {rng} (99.8% within "
        f"[{_fmt(lo)}, {_fmt(hi)}]); set the phase units explicitly "
        f"(one of {', '.join(UNITS[1:])})"
    )


def _forced(units: str, values: np.ndarray, name: str) -> PhaseScaling:
    if units in ("radians", "radians-0-2pi"):
        return PhaseScaling(units, 0.0, 1.0, f"phase units set to {units}: wrapped to [-pi, pi)")
    if units in ("degrees", "degrees-0-360"):
        return PhaseScaling(
            units, 0.0, np.pi / 180, f"phase units set to {units}: multiplied by pi/180"
        )
    if units == "milliradians":
        return PhaseScaling(
            units, 0.0, 1e-3, "phase units set to milliradians: multiplied by 1/1000"
        )
    s = _sample(values)
    if s.size == 0 or s.min() == s.max():
        raise InputDataError(f"{name}: phase is constant; cannot rescale it")
    mn, mx = float(s.min()), float(s.max())
    if units == "integer":
        return _integer_scaling(math.floor(mn), math.ceil(mx), f"[{_fmt(mn)}, {_fmt(mx)}]")
    m = max(-mn, mx)
    return PhaseScaling(
        "scaled",
        0.0,
        np.pi / m,
        f"phase units set to scaled: +-{_fmt(m)} multiplied by pi/{_fmt(m)}",
    )


def rescale_phase(
    values: np.ndarray, units: str = "auto", name: str = "phase", *, metadata: Mapping | None = None
) -> tuple[np.ndarray, str]:
    """Rescale a phase array to float32 radians in [-pi, pi).

    Parameters
    ----------
    values : ndarray
        Phase voxels, any shape.
    units : str, optional
        One of :data:`UNITS`; ``"auto"`` (default) uses :func:`detect_phase_units`.
    name : str, optional
        File name used in messages.
    metadata : mapping, optional
        The phase image's JSON sidecar (see :func:`detect_phase_units`).

    Returns
    -------
    radians : ndarray of float32
        Same shape as ``values``.
    description : str
        One line saying what was detected and done, for the log.

    Examples
    --------
    >>> rad, how = rescale_phase(np.array([[-4096, 0], [2048, 4095]]))
    >>> rad.astype(float).round(3).tolist(), how.split(":")[0]
    ([[-3.142, 0.0], [1.571, 3.141]], 'phase stored as raw integers [-4096, 4095]')
    """
    values = np.asarray(values)
    scaling = phase_scaling(values, units, name, metadata=metadata)
    return scaling.apply(values), scaling.description


def phase_scaling(
    values: np.ndarray, units: str = "auto", name: str = "phase", *, metadata: Mapping | None = None
) -> PhaseScaling:
    """The map to radians for ``values``: detected (``"auto"``) or for the given units.

    ``metadata`` is the phase image's JSON sidecar (``Manufacturer``, ``ImageType``),
    used by ``"auto"`` where it decides the units (:func:`detect_phase_units`).
    Use it to detect on all echoes of a multi-echo phase and apply the result to one:

    >>> echoes = np.random.default_rng(0).uniform(-180, 180, (4, 4, 4, 3))
    >>> phase_scaling(echoes).apply(echoes[..., 1]).shape
    (4, 4, 4)
    """
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, not {units!r}")
    values = np.asarray(values)
    return (
        detect_phase_units(values, name, metadata)
        if units == "auto"
        else _forced(units, values, name)
    )
