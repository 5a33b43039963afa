"""The sign of a paramagnetic phase shift in a scanner's raw phase, by vendor.

A paramagnetic source (microbleed, vein) shifts the gradient-echo phase one way
and a diamagnetic one (calcification) the other, but which way is positive
depends on the scanner's conventions, so a multi-vendor cohort cannot use one
setting for all its subjects. ``paramagnetic_phase: auto`` (the default of the
workflow's ``preprocess`` section) picks the sign from the ``Manufacturer`` of
the input's JSON sidecar, which ingestion copies into its report
(``metadata.Manufacturer``):

===============================  ==========================
Manufacturer (case-insensitive)  paramagnetic phase shift
===============================  ==========================
``Siemens...``                   negative
``Philips...``                   negative
``GE...``, ``General Electric``  positive
===============================  ==========================

This is the convention of the SWI literature (right-handed Siemens and Philips
phase: veins dark; GE's left-handed phase: veins bright) and of ``cmb synth``.
Reconstruction software or converters may flip a vendor's phase: when a site's
veins look dark on the workflow's high-pass phase (which should show them
bright), set ``positive`` or ``negative`` explicitly for that site's run.

Any other or a missing ``Manufacturer`` is an error with ``auto`` (it names the
file and asks for an explicit setting): guessing would silently turn microbleeds
into calcifications.
"""

from __future__ import annotations

import json
import os
import re

from cmb.failures import InputDataError

__all__ = ["PHASE_SETTINGS", "VENDOR_PARAMAGNETIC_PHASE", "manufacturer_from_report",
           "resolve_paramagnetic_phase"]

#: Accepted values of ``paramagnetic_phase``.
PHASE_SETTINGS = ("auto", "positive", "negative")

#: Sign of a paramagnetic phase shift per vendor (keys: the vendor patterns below).
VENDOR_PARAMAGNETIC_PHASE = {"Siemens": "negative", "Philips": "negative", "GE": "positive"}

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


def resolve_paramagnetic_phase(setting: str, manufacturer: str | None = None,
                               source: str | os.PathLike = "input") -> tuple[str, str]:
    """The sign (``"positive"``/``"negative"``) to use and why, in one line.

    Parameters
    ----------
    setting : {"auto", "positive", "negative"}
        The configured value; an explicit sign is returned as is.
    manufacturer : str, optional
        The input's ``Manufacturer`` (JSON sidecar); used by ``"auto"``.
    source : path or str, optional
        Where ``manufacturer`` was read, for messages.

    Raises
    ------
    ValueError
        ``setting`` is not one of :data:`PHASE_SETTINGS`.
    cmb.failures.InputDataError
        ``"auto"`` with a missing or unknown manufacturer; the message names ``source``.

    Examples
    --------
    >>> resolve_paramagnetic_phase("auto", "SIEMENS")[0]
    'negative'
    >>> resolve_paramagnetic_phase("auto", "GE MEDICAL SYSTEMS")[1]
    "auto: Manufacturer 'GE MEDICAL SYSTEMS' (GE): paramagnetic phase positive"
    >>> resolve_paramagnetic_phase("negative", "GE")[0]
    'negative'
    """
    if setting not in PHASE_SETTINGS:
        raise ValueError(f"paramagnetic_phase must be one of {PHASE_SETTINGS}, not {setting!r}")
    if setting != "auto":
        return setting, f"set to {setting} in the configuration"
    vendor = _vendor(manufacturer)
    if vendor is None:
        what = "no Manufacturer" if manufacturer in (None, "") else f"Manufacturer {manufacturer!r} has no known phase sign"
        raise InputDataError(
            f"{source}: {what}, so paramagnetic_phase: auto cannot tell the phase sign convention; "
            f"set preprocess.paramagnetic_phase to positive or negative for this data "
            f"(known: {', '.join(f'{k} {v}' for k, v in VENDOR_PARAMAGNETIC_PHASE.items())})")
    sign = VENDOR_PARAMAGNETIC_PHASE[vendor]
    return sign, f"auto: Manufacturer {manufacturer!r} ({vendor}): paramagnetic phase {sign}"


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
        raise InputDataError(f"{path}: cannot read the ingest report ({type(exc).__name__}: {exc})") from exc
    meta = report.get("metadata") if isinstance(report, dict) else None
    value = meta.get("Manufacturer") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None
