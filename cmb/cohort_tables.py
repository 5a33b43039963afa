"""Cohort tables: ``cmb_counts.csv`` (one row per subject/session), ``cmb_detections.csv``
(every above-threshold detection of every scan, counted or rejected) and their
BIDS-style data dictionaries.

Inputs are the per-subject outputs of :mod:`cmb.localize` (detections TSV and its JSON
sidecar) and every stage's status record (:mod:`cmb.failures`); nothing else is read,
so the tables of a 1,000-subject cohort take seconds.

``cmb_counts.csv`` columns (:data:`COUNT_COLUMNS`, described in
``cmb/data_dictionary.json``):

- identity, ``status`` (ok/failed) with the first ``failing_stage`` and its message,
  ``site`` and ``scanner`` when the metadata has them;
- ``n_cmb`` (rows with ``is_cmb``), ``n_lobar/n_deep/n_infratentorial/n_unlocalized``,
  ``mars_pattern`` (strictly_lobar, deep_or_mixed, infratentorial_only, none), and
  ``n_<region>_<L|R>`` for the 13 MARS regions: the names are regular, so a long
  table is one ``pivot_longer``/``melt`` with the pattern ``n_(.*)_(L|R)`` away;
- candidate bookkeeping (``n_candidates``, ``n_above_threshold``, ``n_below_threshold``, ``n_rejected...``);
- QC: registration NMI and mask Dice, brain-mask volume, and the flags
  ``qc_registration``, ``qc_brain_mask``, ``qc_extreme_count``, ``qc_flags``.

Counts are ``n/a`` (never 0) where the scan has no detections table. Rows are sorted
by participant and session, numbers have fixed formats, nothing depends on the time:
a rerun writes byte-identical files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cmb.atomic import atomic_path, write_text
from cmb.failures import read_record
from cmb.mars_region import CATEGORY, REGIONS
from cmb.phase_convention import (
    COHORT_MISMATCH_FLAG,
    MISMATCH_FLAG,
    UNCONFIDENT_FLAG,
    cohort_phase_columns,
    phase_convention_columns,
    read_phase_convention,
)
from cmb.tables import COUNT_COLUMNS, DETECTION_COLUMNS, data_dictionary
from cmb.verdicts import REVIEW_COLUMNS, review_columns

__all__ = [
    "DEFAULT_QC",
    "SubjectFiles",
    "mars_pattern",
    "stage_status",
    "count_detections",
    "qc_checks",
    "build_counts",
    "build_detections",
    "counts_long",
    "read_sites",
    "write_cohort_tables",
]

_NA = "n/a"
#: The scans that share a phase sign convention: one site's scanner (its reconstruction and
#: converter go with it); pooled by :func:`cmb.phase_convention.cohort_phase_columns`.
PHASE_GROUP = ("site", "manufacturer", "scanner")
CATEGORIES = ("lobar", "deep", "infratentorial")
#: Default QC limits (config ``localize.qc``).
DEFAULT_QC = {
    "min_registration_dice": 0.85,
    "min_registration_nmi": 1.05,
    "min_brain_volume_ml": 800.0,
    "max_brain_volume_ml": 2500.0,
    "max_cmb": 50,
    "max_above_threshold": 100,
}


@dataclass
class SubjectFiles:
    """The files of one subject/session the cohort tables read."""

    participant_id: str
    session_id: str | None
    detections: str | os.PathLike | None = None
    sidecar: str | os.PathLike | None = None
    records: Sequence[str | os.PathLike] = field(
        default_factory=list
    )  # status records, pipeline order
    report: str | None = None  # subject HTML, relative to the cohort report
    site: str | None = None
    phase: str | os.PathLike | None = (
        None  # preprocessed phase: its sidecar holds the phase convention
    )


# --------------------------------------------------------------------------- one subject


def mars_pattern(n_lobar: int, n_deep: int, n_infratentorial: int) -> str:
    """MARS pattern of a scan's localized CMB counts.

    >>> [mars_pattern(*c) for c in [(3, 0, 0), (2, 1, 0), (1, 0, 1), (0, 0, 2), (0, 0, 0)]]
    ['strictly_lobar', 'deep_or_mixed', 'deep_or_mixed', 'infratentorial_only', 'none']
    """
    if n_lobar + n_deep + n_infratentorial == 0:
        return "none"
    if n_deep == 0 and n_infratentorial == 0:
        return "strictly_lobar"
    if n_lobar == 0 and n_deep == 0:
        return "infratentorial_only"
    return "deep_or_mixed"


def stage_status(records: Iterable) -> dict:
    """``status``, ``failing_stage`` and ``failure_message`` from a scan's status records.

    The failing stage is the first record (in the given, pipeline order) that failed;
    when only skipped records are found (an upstream record is missing), the stage
    they name. Missing records are ignored.

    >>> stage_status([{"status": "ok", "stage": "ingest"}, {"status": "failed", "stage": "register",
    ...               "message": "boom"}, {"status": "skipped", "stage": "plot_registration"}])
    {'status': 'failed', 'failing_stage': 'register', 'failure_message': 'boom'}
    """
    recs = [r if isinstance(r, dict) else read_record(r) for r in records]
    recs = [r for r in recs if r is not None]
    failed = [r for r in recs if r.get("status") == "failed"]
    skipped = [r for r in recs if r.get("status") == "skipped"]
    if failed:
        r = failed[0]
        return {
            "status": "failed",
            "failing_stage": str(r.get("stage") or _NA),
            "failure_message": str(r.get("message") or _NA),
        }
    if skipped:
        r = skipped[0]
        return {
            "status": "failed",
            "failing_stage": str(r.get("upstream_stage") or r.get("stage") or _NA),
            "failure_message": str(r.get("message") or _NA),
        }
    return {"status": "ok", "failing_stage": _NA, "failure_message": _NA}


def count_detections(det: pd.DataFrame, anatomy: bool = True) -> dict:
    """Counts of one scan's detections table (text, as written by :mod:`cmb.localize`).

    >>> det = pd.DataFrame({"is_cmb": ["true", "true", "false"], "above_threshold": ["true"] * 2 + ["false"],
    ...     "rejected": ["false"] * 3, "rejected_reason": ["n/a"] * 3,
    ...     "mars_category": ["lobar", "deep", "lobar"], "mars_region": ["frontal", "thalamus", "frontal"],
    ...     "hemisphere": ["L", "R", "L"]})
    >>> c = count_detections(det)
    >>> c["n_cmb"], c["n_frontal_L"], c["n_thalamus_R"], c["mars_pattern"], c["n_below_threshold"]
    (2, 1, 1, 'deep_or_mixed', 1)
    """
    is_cmb = det["is_cmb"].astype(str).str.lower() == "true"
    cmb = det[is_cmb]
    out: dict = {"n_cmb": int(is_cmb.sum())}
    if anatomy:
        cat = cmb["mars_category"].value_counts()
        for c in CATEGORIES:
            out[f"n_{c}"] = int(cat.get(c, 0))
        out["n_unlocalized"] = out["n_cmb"] - sum(out[f"n_{c}"] for c in CATEGORIES)
        out["mars_pattern"] = (
            mars_pattern(out["n_lobar"], out["n_deep"], out["n_infratentorial"])
            if out["n_cmb"] == 0 or out["n_unlocalized"] < out["n_cmb"]
            else _NA
        )
        reg = (cmb["mars_region"] + "_" + cmb["hemisphere"]).value_counts()
        for r in REGIONS:
            for h in ("L", "R"):
                out[f"n_{r}_{h}"] = int(reg.get(f"{r}_{h}", 0))
    else:
        out.update({f"n_{c}": _NA for c in CATEGORIES})
        out["n_unlocalized"] = out["n_cmb"]
        out["mars_pattern"] = "none" if out["n_cmb"] == 0 else _NA
        out.update({f"n_{r}_{h}": _NA for r in REGIONS for h in ("L", "R")})
    above = det["above_threshold"].astype(str).str.lower() == "true"
    reason = det["rejected_reason"].astype(str)
    out.update(
        n_candidates=len(det),
        n_above_threshold=int(above.sum()),
        n_below_threshold=int((~above).sum()),
        n_rejected=int((det["rejected"].astype(str).str.lower() == "true").sum()),
        n_rejected_vessel=int((reason == "vessel").sum()),
        n_rejected_csf=int((reason == "csf").sum()),
        n_rejected_outside_brain=int((reason == "outside_brain").sum()),
    )
    return out


def _num(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if v == v else None


def qc_checks(row: dict, qc: dict | None = None) -> dict:
    """QC flags of one counts row (values: pass / warn / fail / n/a).

    >>> r = qc_checks({"status": "ok", "registration_mask_dice": 0.95, "registration_nmi": 1.2,
    ...                "brain_mask_volume_ml": 300.0, "n_cmb": 2, "n_above_threshold": 10})
    >>> r["qc_registration"], r["qc_brain_mask"], r["qc_extreme_count"], r["qc_flags"]
    ('pass', 'warn', 'pass', 'brain_mask')
    """
    qc = {**DEFAULT_QC, **(qc or {})}
    out = {}
    dice, nmi = _num(row.get("registration_mask_dice")), _num(row.get("registration_nmi"))
    if row.get("failing_stage") in ("register", "register_to_mni"):
        out["qc_registration"] = "fail"
    elif dice is None and nmi is None:
        out["qc_registration"] = _NA
    elif (dice is not None and dice < qc["min_registration_dice"]) or (
        nmi is not None and nmi < qc["min_registration_nmi"]
    ):
        out["qc_registration"] = "warn"
    else:
        out["qc_registration"] = "pass"
    vol = _num(row.get("brain_mask_volume_ml"))
    out["qc_brain_mask"] = (
        _NA
        if vol is None
        else "pass"
        if qc["min_brain_volume_ml"] <= vol <= qc["max_brain_volume_ml"]
        else "warn"
    )
    n_cmb, n_above = _num(row.get("n_cmb")), _num(row.get("n_above_threshold"))
    if n_cmb is None and n_above is None:
        out["qc_extreme_count"] = _NA
    else:
        extreme = (n_cmb or 0) >= qc["max_cmb"] or (n_above or 0) >= qc["max_above_threshold"]
        out["qc_extreme_count"] = "warn" if extreme else "pass"
    flags = [
        name
        for name, key in (
            ("failed", None),
            ("registration", "qc_registration"),
            ("brain_mask", "qc_brain_mask"),
            ("extreme_count", "qc_extreme_count"),
        )
        if (key is None and row.get("status") == "failed") or (key and out[key] in ("warn", "fail"))
    ]
    flags += [
        flag
        for flag in (MISMATCH_FLAG, UNCONFIDENT_FLAG, COHORT_MISMATCH_FLAG)
        if row.get(flag) == "true"
    ]
    out["qc_flags"] = ";".join(flags) if flags else _NA
    return out


def _read_json(path) -> dict | None:
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def _read_detections(path) -> pd.DataFrame | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def _scanner(acq: dict | None) -> str:
    if not acq:
        return _NA
    parts = [str(acq[k]) for k in ("Manufacturer", "ManufacturersModelName") if acq.get(k)]
    if acq.get("MagneticFieldStrength"):
        parts.append(f"{float(acq['MagneticFieldStrength']):g}T")
    return " ".join(parts) or _NA


def _fmt(v, spec: str) -> str:
    v = _num(v)
    return _NA if v is None else format(v, spec)


def _subject_row(s: SubjectFiles, qc: dict | None) -> tuple[dict, pd.DataFrame | None]:
    pid = s.participant_id if s.participant_id.startswith("sub-") else f"sub-{s.participant_id}"
    sid = (
        _NA
        if not s.session_id
        else (s.session_id if s.session_id.startswith("ses-") else f"ses-{s.session_id}")
    )
    row = {"participant_id": pid, "session_id": sid, **stage_status(s.records)}
    det = _read_detections(s.detections)
    meta = _read_json(s.sidecar) if det is not None else None
    summary = (meta or {}).get("Summary") or {}
    prov = (meta or {}).get("Provenance") or {}
    row["site"] = s.site or _NA
    row["scanner"] = _scanner(prov.get("acquisition"))
    if det is not None:
        row.update(count_detections(det, anatomy=bool(summary.get("anatomy_available", True))))
    reg = summary.get("registration") or {}
    row["registration_nmi"] = _fmt(reg.get("nmi"), ".4f")
    row["registration_mask_dice"] = _fmt(reg.get("mask_dice"), ".4f")
    anatomy = bool(summary.get("anatomy_available")) if meta else False
    row["parcellation_source"] = (
        ((meta.get("Localization") or {}).get("parcellation_source") or _NA) if anatomy else _NA
    )
    row["brain_mask_volume_ml"] = _fmt(summary.get("brain_mask_volume_ml"), ".1f")
    convention = read_phase_convention(s.phase) if s.phase else None
    row.update(phase_convention_columns(convention))
    # not a column: with site and scanner, the group that shares a phase convention
    row["manufacturer"] = (convention or {}).get("manufacturer") or _NA
    return row, det


def build_counts(
    subjects: Iterable[SubjectFiles], qc: dict | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The counts table and the concatenated detections table (both all text, sorted)."""
    rows, dets = [], []
    for s in subjects:
        row, det = _subject_row(s, qc)
        rows.append(row)
        if det is not None and len(det):
            dets.append(det)
    for row, cohort in zip(rows, cohort_phase_columns(rows, PHASE_GROUP)):
        row.update(cohort)
        row.update(qc_checks(row, qc))
    rows = [{k: _NA if v is None else str(v) for k, v in row.items()} for row in rows]
    counts = pd.DataFrame(rows, columns=COUNT_COLUMNS).fillna(_NA).astype(str)
    counts = counts.sort_values(["participant_id", "session_id"], kind="stable").reset_index(
        drop=True
    )
    return counts, build_detections(dets)


def build_detections(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The above-threshold rows (counted or rejected) of per-scan detections tables (text),
    sorted by participant, session, cmb_id.

    Below-threshold candidates (thousands per scan) stay in the per-subject TSVs, for the
    QC pages and FROC analyses; the cohort table would otherwise grow by about 0.6 MB per scan.

    >>> t = pd.DataFrame({"participant_id": ["sub-01"] * 3, "session_id": ["n/a"] * 3, "cmb_id": ["2", "1", "3"],
    ...                   "above_threshold": ["true", "true", "false"]})
    >>> build_detections([t])["cmb_id"].tolist()
    ['1', '2']
    """
    tables = [t[t["above_threshold"].astype(str).str.lower() == "true"] for t in tables]
    if not any(len(t) for t in tables):
        return pd.DataFrame(columns=DETECTION_COLUMNS)
    det = pd.concat(
        [t.reindex(columns=DETECTION_COLUMNS, fill_value=_NA) for t in tables if len(t)],
        ignore_index=True,
    )
    key = pd.to_numeric(det["cmb_id"], errors="coerce")
    det = det.assign(_k=key).sort_values(["participant_id", "session_id", "_k"], kind="stable")
    return det.drop(columns="_k").reset_index(drop=True)


def counts_long(counts: pd.DataFrame) -> pd.DataFrame:
    """The per-region counts of ``counts`` in long form: one row per scan, region and hemisphere.

    >>> wide = pd.DataFrame({"participant_id": ["sub-01"], "session_id": ["n/a"],
    ...                      **{f"n_{r}_{h}": ["0"] for r in REGIONS for h in "LR"}})
    >>> long = counts_long(wide)
    >>> len(long), list(long.columns)
    (26, ['participant_id', 'session_id', 'mars_category', 'mars_region', 'hemisphere', 'n_cmb'])
    """
    rows = []
    for rec in counts.to_dict("records"):
        for r in REGIONS:
            for h in ("L", "R"):
                rows.append(
                    (rec["participant_id"], rec["session_id"], CATEGORY[r], r, h, rec[f"n_{r}_{h}"])
                )
    return pd.DataFrame(
        rows,
        columns=[
            "participant_id",
            "session_id",
            "mars_category",
            "mars_region",
            "hemisphere",
            "n_cmb",
        ],
    )


def read_sites(participants_tsv: str | os.PathLike | None) -> dict[str, str]:
    """participant_id -> site from a BIDS participants.tsv (columns site, Site, center or centre)."""
    if participants_tsv is None or not Path(participants_tsv).is_file():
        return {}
    table = pd.read_csv(participants_tsv, sep="\t", dtype=str, keep_default_na=False)
    col = next(
        (c for c in ("site", "Site", "center", "centre", "scanner_site") if c in table.columns),
        None,
    )
    if col is None or "participant_id" not in table.columns:
        return {}
    return {
        str(p): str(v)
        for p, v in zip(table["participant_id"], table[col])
        if str(v) not in ("", "n/a")
    }


def _write_csv(table: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")


def write_cohort_tables(
    subjects: Iterable[SubjectFiles],
    out_counts,
    out_detections,
    *,
    qc: dict | None = None,
    out_ratings=None,
    out_counts_long=None,
    log=None,
    verdicts: Sequence = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``cmb_counts.csv`` and ``cmb_detections.csv``, each with its data dictionary
    (same name, ``.json``), optionally the long-form region counts (with its dictionary),
    a reviewer ratings template (TSV) and a one-line log.

    With ``verdicts`` (reviewers' verdict files, :mod:`cmb.verdicts`), ``cmb_counts.csv``
    gains the review columns (:data:`cmb.verdicts.REVIEW_COLUMNS`)."""
    subjects = list(subjects)
    counts, det = build_counts(subjects, qc)
    if verdicts:
        ids = counts.set_index(
            ["participant_id", "session_id"]
        ).index  # build_counts' sub-/ses- labels
        scans = [
            (
                f"sub-{s.participant_id.removeprefix('sub-')}",
                f"ses-{s.session_id.removeprefix('ses-')}" if s.session_id else _NA,
                s.detections,
            )
            for s in subjects
        ]
        review = review_columns([sc for sc in scans if (sc[0], sc[1]) in ids], verdicts)
        counts = counts.merge(review, on=["participant_id", "session_id"], how="left").fillna(_NA)
    _write_csv(counts, out_counts)
    _write_csv(det, out_detections)
    tables = [(out_counts, "counts"), (out_detections, "detections")]
    if out_counts_long is not None:
        _write_csv(counts_long(counts), out_counts_long)
        tables.append((out_counts_long, "counts_long"))
    for path, name in tables:  # keys in column order
        dictionary = {
            **data_dictionary(name),
            **(REVIEW_COLUMNS if name == "counts" and verdicts else {}),
        }
        write_text(Path(path).with_suffix(".json"), json.dumps(dictionary, indent=2) + "\n")
    if out_ratings is not None:
        ratings = counts[["participant_id", "session_id"]].assign(
            rating="", reviewer="", comment=""
        )
        with atomic_path(out_ratings) as tmp:
            ratings.to_csv(tmp, sep="\t", index=False, lineterminator="\n")
    if log is not None:
        failed = int((counts["status"] != "ok").sum())
        write_text(log, f"{len(counts)} scans ({failed} failed), {len(det)} candidates\n")
    return counts, det
