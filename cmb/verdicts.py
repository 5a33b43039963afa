"""Reviewers' verdicts on detections: the file format, reading, consensus and agreement.

A reviewer checks each candidate of a scan in its subject page (the viewer of
:mod:`cmb.report.viewer`) and exports one TSV per scan and reviewer::

    <scan>_rater-<reviewer>_label-CMB_dseg.tsv     e.g. sub-01_ses-1_rater-alice_label-CMB_dseg.tsv

It is a point annotation table, the format ``cmb train``, ``cmb calibrate`` and
``cmb evaluate`` read as ground truth (:func:`cmb.evaluation.truth_from_points`),
with one row per verdict (:data:`VERDICT_COLUMNS`):

``index``
    1..n within the file.
``x_mm, y_mm, z_mm``; ``i, j, k``
    Position in scanner RAS mm and voxel on the preprocessed grid (``n/a`` allowed for
    ``i, j, k``).
``radius_mm``
    Matching radius hint (half the candidate's diameter; 0 for an added point).
``verdict``
    ``accept`` (a CMB), ``reject`` (not a CMB: ``reason`` says why), ``unsure``, or
    ``added`` (a CMB the tool missed, marked at the viewer's cursor).
``reason``
    ``vein``, ``calcification``, ``artefact`` or ``other`` for a rejection, else ``n/a``.
``comment, reviewer, time``
    Free text (tabs and newlines become spaces), the reviewer's name, ISO 8601 time.
``candidate_id, confidence``
    The tool's candidate (its ``cmb_id``) and confidence; ``n/a`` for an added CMB.

As ground truth, ``accept`` and ``added`` rows are CMBs; ``reject`` rows are places
known *not* to hold one; ``unsure`` rows and every candidate without a verdict are
unreviewed: never counted as negatives. Several reviewers of one scan (files keyed
by reviewer, side by side) are combined by majority (:func:`consensus`); a tie
is unreviewed.

Verdicts refer to candidates by position, not only by id, so a rerun with new
weights keeps them: :func:`attach_verdicts` re-attaches each verdict to the
current candidate within ``tolerance_mm`` and reports (and keeps) the others.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cmb.atomic import write_text

__all__ = [
    "VERDICT_COLUMNS",
    "VERDICTS",
    "REASONS",
    "CMB_VERDICTS",
    "NON_CMB_VERDICTS",
    "REVIEW_COLUMNS",
    "ATTACH_TOLERANCE_MM",
    "VerdictError",
    "verdict_file_name",
    "is_verdict_file",
    "read_verdicts",
    "write_verdicts",
    "find_verdict_files",
    "scan_verdict_files",
    "consensus",
    "attach_verdicts",
    "reviewer_agreement",
    "review_columns",
]

_log = logging.getLogger(__name__)

VERDICT_COLUMNS = [
    "index",
    "x_mm",
    "y_mm",
    "z_mm",
    "i",
    "j",
    "k",
    "radius_mm",
    "verdict",
    "reason",
    "comment",
    "reviewer",
    "time",
    "candidate_id",
    "confidence",
]
VERDICTS = ("accept", "reject", "unsure", "added")
REASONS = ("vein", "calcification", "artefact", "other")
#: Verdicts that make a point a CMB, and one that makes it a known non-CMB.
CMB_VERDICTS = ("accept", "added")
NON_CMB_VERDICTS = ("reject",)
#: Columns the cohort table gains once verdicts exist (:func:`review_columns`).
REVIEW_COLUMNS = {
    "reviewed": {
        "Description": "true when every counted detection of the scan has a verdict of every reviewer "
        "of the scan (unsure counts as a verdict); false when some lack one; n/a without "
        "any verdict file"
    },
    "verdict": {
        "Description": "the reviewers' consensus on the scan's detections",
        "Levels": {
            "confirmed": "every counted detection accepted, nothing added or rejected",
            "corrected": "some detections rejected or CMBs added",
            "disputed": "reviewers disagree on at least one candidate (a tie)",
            "n/a": "no verdict file",
        },
    },
    "n_reviewers": {
        "Description": "number of reviewers with a verdict file for the scan (0 without)"
    },
    "n_cmb_reviewed": {
        "Description": "rater-confirmed CMB count: consensus accepted plus added; n/a without verdicts"
    },
}
#: Largest distance (mm) at which a verdict is re-attached to a candidate of a rerun.
ATTACH_TOLERANCE_MM = 2.0

_NA = "n/a"
_NAME = re.compile(
    r"^(?P<scan>sub-[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?(?:_run-[0-9]+)?)_rater-(?P<reviewer>[A-Za-z0-9]+)"
    r"_label-CMB_dseg\.tsv$"
)
_REQUIRED = ("x_mm", "y_mm", "z_mm", "verdict", "reviewer")


class VerdictError(ValueError):
    """A malformed verdict file: the message names the file and line."""


def _reviewer_label(reviewer: str) -> str:
    """The reviewer's name as a BIDS label (letters and digits).

    >>> _reviewer_label("Dr. A. Smith")
    'DrASmith'
    """
    label = re.sub(r"[^A-Za-z0-9]", "", str(reviewer))
    if not label:
        raise VerdictError(
            f"reviewer name {reviewer!r} has no letter or digit: cannot name its verdict file"
        )
    return label


def verdict_file_name(scan: str, reviewer: str) -> str:
    """File name of ``reviewer``'s verdicts on ``scan`` (``sub-X[_ses-Y][_run-N]``).

    >>> verdict_file_name("sub-01_ses-1", "alice")
    'sub-01_ses-1_rater-alice_label-CMB_dseg.tsv'
    """
    return f"{scan}_rater-{_reviewer_label(reviewer)}_label-CMB_dseg.tsv"


def is_verdict_file(path) -> bool:
    """Whether ``path`` is named as a verdict file (``*_rater-<name>_label-CMB_dseg.tsv``)."""
    return _NAME.match(Path(path).name) is not None


def _number(text: str, path, line: int, column: str, allow_na: bool = False) -> float:
    if allow_na and text in ("", _NA):
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise VerdictError(
            f"{path}, line {line}: column {column} is {text!r}, not a number"
        ) from None
    if not math.isfinite(value):
        raise VerdictError(f"{path}, line {line}: column {column} is {text!r}, not a finite number")
    return value


def read_verdicts(path) -> pd.DataFrame:
    """Read and check one verdict file; every error names the file and line.

    Returns a table with :data:`VERDICT_COLUMNS` (coordinates as floats, ``candidate_id``
    and ``confidence`` as floats with NaN for ``n/a``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise VerdictError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise VerdictError(
            f"{path}, line 1: empty file; a verdict file starts with the header "
            + "\\t".join(VERDICT_COLUMNS)
        )
    header = lines[0].split("\t")
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise VerdictError(
            f"{path}, line 1: header lacks column(s) {', '.join(missing)} (has: {', '.join(header)})"
        )
    rows = []
    for n, line in enumerate(
        csv.reader(lines[1:], delimiter="\t", quoting=csv.QUOTE_NONE), start=2
    ):
        if not line or not "".join(line).strip():
            continue
        if len(line) != len(header):
            raise VerdictError(
                f"{path}, line {n}: {len(line)} fields, the header has {len(header)}"
            )
        r = dict(zip(header, line))
        verdict = r["verdict"].strip().lower()
        if verdict not in VERDICTS:
            raise VerdictError(
                f"{path}, line {n}: verdict {r['verdict']!r} is not one of {', '.join(VERDICTS)}"
            )
        reason = r.get("reason", _NA).strip().lower() or _NA
        if verdict == "reject" and reason not in REASONS:
            raise VerdictError(
                f"{path}, line {n}: a rejection needs a reason ({', '.join(REASONS)}), got {reason!r}"
            )
        if verdict != "reject" and reason not in (_NA, *REASONS):
            raise VerdictError(
                f"{path}, line {n}: reason {reason!r} is not one of {', '.join(REASONS)} or n/a"
            )
        if not r["reviewer"].strip() or r["reviewer"].strip() == _NA:
            raise VerdictError(f"{path}, line {n}: no reviewer name")
        out = {c: r.get(c, _NA) for c in VERDICT_COLUMNS}
        out.update(verdict=verdict, reason=reason, reviewer=r["reviewer"].strip())
        for c in ("x_mm", "y_mm", "z_mm"):
            out[c] = _number(r[c], path, n, c)
        for c in ("i", "j", "k", "radius_mm", "candidate_id", "confidence"):
            out[c] = _number(r.get(c, _NA), path, n, c, allow_na=True)
        if verdict == "added":
            out["candidate_id"] = math.nan
        rows.append(out)
    table = pd.DataFrame(rows, columns=VERDICT_COLUMNS)
    if len(set(table["reviewer"])) > 1:
        raise VerdictError(
            f"{path}: verdicts of several reviewers ({', '.join(sorted(set(table['reviewer'])))}) in "
            "one file; a file holds one reviewer's verdicts"
        )
    m = _NAME.match(path.name)
    if m and len(table) and _reviewer_label(table["reviewer"].iloc[0]) != m["reviewer"]:
        raise VerdictError(
            f"{path}, line 2: reviewer {table['reviewer'].iloc[0]!r} does not match the file name's "
            f"rater-{m['reviewer']}"
        )
    table["index"] = np.arange(1, len(table) + 1)
    return table


def write_verdicts(
    table: pd.DataFrame, folder, scan: str, reviewer: str, *, overwrite: bool = False
) -> Path:
    """Write ``reviewer``'s verdicts on ``scan`` into ``folder`` (atomically); returns the path.

    Another reviewer's file is never touched (the name is keyed by reviewer); an
    existing file of the same reviewer is kept unless ``overwrite``.
    """
    path = Path(folder) / verdict_file_name(scan, reviewer)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} exists: it holds earlier verdicts of {reviewer}; not overwritten"
        )
    out = pd.DataFrame(table).reindex(columns=VERDICT_COLUMNS)
    out["index"] = np.arange(1, len(out) + 1)
    out["reviewer"] = reviewer
    out = out.fillna(_NA)
    for c in ("comment", "reviewer"):
        out[c] = out[c].astype(str).str.replace(r"[\t\r\n]+", " ", regex=True)
    write_text(path, out.to_csv(sep="\t", index=False, lineterminator="\n"))
    return path


def find_verdict_files(folder) -> dict[str, list[Path]]:
    """Verdict files under ``folder`` by scan key (``sub-X[_ses-Y][_run-N]``), each list sorted by name."""
    found: dict[str, list[Path]] = {}
    if folder is None or not Path(folder).is_dir():
        return found
    for path in sorted(Path(folder).rglob("*_label-CMB_dseg.tsv")):
        m = _NAME.match(path.name)
        if m:
            found.setdefault(m["scan"], []).append(path)
    return found


def scan_verdict_files(path) -> list[Path]:
    """Every reviewer's verdict file of the scan that ``path`` (one of them) belongs to, in its folder."""
    path = Path(path)
    m = _NAME.match(path.name)
    if m is None:
        return [path]
    return sorted(
        p for p in path.parent.glob(f"{m['scan']}_rater-*_label-CMB_dseg.tsv") if is_verdict_file(p)
    )


def _groups(tables: Sequence[pd.DataFrame], tolerance_mm: float) -> list[list[tuple[int, int]]]:
    """Verdict rows of several reviewers grouped by candidate id, else by position within tolerance."""
    groups: list[list[tuple[int, int]]] = []
    centres: list[np.ndarray] = []
    by_id: dict[float, int] = {}
    for t, table in enumerate(tables):
        for r, row in enumerate(table.itertuples(index=False)):
            xyz = np.array([row.x_mm, row.y_mm, row.z_mm], dtype=float)
            g = by_id.get(row.candidate_id) if not math.isnan(row.candidate_id) else None
            if g is None and centres:
                d = np.linalg.norm(np.asarray(centres) - xyz, axis=1)
                free = [
                    k
                    for k in np.argsort(d)
                    if d[k] <= tolerance_mm and all(tt != t for tt, _ in groups[k])
                ]
                g = free[0] if free else None
            if g is None:
                groups.append([])
                centres.append(xyz)
                g = len(groups) - 1
            groups[g].append((t, r))
            if not math.isnan(row.candidate_id):
                by_id.setdefault(row.candidate_id, g)
    return groups


def consensus(
    tables: Sequence[pd.DataFrame], tolerance_mm: float = ATTACH_TOLERANCE_MM
) -> pd.DataFrame:
    """One verdict per candidate from several reviewers' tables (majority; a tie is ``unsure``).

    A CMB added by one reviewer counts as "not a CMB" for a reviewer whose file has no
    row there. The result has the verdict columns plus ``n_reviewers`` (who voted) and
    ``disputed`` (a tie), with the reviewer ``consensus``.

    >>> a = pd.DataFrame({"x_mm": [0.0], "y_mm": [0.0], "z_mm": [0.0], "verdict": ["accept"],
    ...                   "candidate_id": [1.0], "reason": ["n/a"]})
    >>> b = a.assign(verdict="reject", reason="vein")
    >>> consensus([a, a, b])[["verdict", "n_reviewers", "disputed"]].values.tolist()
    [['accept', 3, False]]
    >>> consensus([a, b])["verdict"].tolist()
    ['unsure']
    """
    tables = [
        pd.DataFrame(t).reset_index(drop=True).reindex(columns=VERDICT_COLUMNS) for t in tables
    ]
    for t in tables:
        t["candidate_id"] = pd.to_numeric(t["candidate_id"], errors="coerce")
    if len(tables) == 1:
        return tables[0].assign(n_reviewers=1, disputed=False)
    rows = []
    for group in _groups(tables, tolerance_mm):
        members = [tables[t].iloc[r] for t, r in group]
        votes = [m["verdict"] for m in members if m["verdict"] != "unsure"]
        added = any(m["verdict"] == "added" for m in members)
        if added:  # reviewers who did not mark it said "no CMB here" by leaving it out
            votes += ["reject"] * (len(tables) - len(members))
        yes = sum(v in CMB_VERDICTS for v in votes)
        no = len(votes) - yes
        verdict = (
            ("added" if added else "accept") if yes > no else ("reject" if no > yes else "unsure")
        )
        first = members[0].to_dict()
        reasons = [m["reason"] for m in members if m["verdict"] == "reject"]
        first.update(
            verdict=verdict,
            reason=max(set(reasons), key=reasons.count) if verdict == "reject" and reasons else _NA,
            reviewer="consensus",
            n_reviewers=len(members) if not added else len(tables),
            disputed=bool(votes) and yes == no,
            comment="; ".join(
                str(m["comment"]) for m in members if str(m["comment"]) not in ("", _NA, "nan")
            )
            or _NA,
        )
        first["x_mm"], first["y_mm"], first["z_mm"] = (
            float(np.mean([m[c] for m in members])) for c in ("x_mm", "y_mm", "z_mm")
        )
        rows.append(first)
    out = pd.DataFrame(rows, columns=[*VERDICT_COLUMNS, "n_reviewers", "disputed"])
    out["index"] = np.arange(1, len(out) + 1)
    return out


def attach_verdicts(
    verdicts: pd.DataFrame, candidates: pd.DataFrame, tolerance_mm: float = ATTACH_TOLERANCE_MM
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attach verdicts to the current candidates (``cmb_id``, ``x_mm, y_mm, z_mm``).

    A verdict keeps its candidate when that candidate still lies within
    ``tolerance_mm`` of the verdict's position; otherwise it moves to the nearest free
    candidate within the tolerance (a rerun renumbered them). Added CMBs are attached
    to a candidate there too (the tool now finds them). The rest are returned apart,
    never dropped.

    Returns
    -------
    attached : DataFrame
        The attached verdicts with ``cmb_id`` (the current candidate) and ``moved_mm``.
    orphans : DataFrame
        Verdicts with no candidate within the tolerance (added CMBs the tool still misses
        among them).
    """
    verdicts = pd.DataFrame(verdicts).reset_index(drop=True)
    cands = pd.DataFrame(candidates).reset_index(drop=True)
    ids = (
        pd.to_numeric(cands["cmb_id"], errors="coerce").to_numpy(dtype=float)
        if len(cands)
        else np.zeros(0)
    )
    xyz = (
        cands[["x_mm", "y_mm", "z_mm"]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
        if len(cands)
        else np.zeros((0, 3))
    )
    taken: set[int] = set()
    cmb_id, moved = np.full(len(verdicts), np.nan), np.full(len(verdicts), np.nan)
    pts = verdicts[["x_mm", "y_mm", "z_mm"]].to_numpy(float) if len(verdicts) else np.zeros((0, 3))
    cid = pd.to_numeric(
        verdicts.get("candidate_id", pd.Series(np.nan, verdicts.index)), errors="coerce"
    ).to_numpy()
    order = sorted(
        range(len(verdicts)), key=lambda n: math.isnan(cid[n])
    )  # verdicts with an id first
    for n in order:
        d = np.linalg.norm(xyz - pts[n], axis=1) if len(xyz) else np.zeros(0)
        same = np.flatnonzero(ids == cid[n]) if not math.isnan(cid[n]) else np.zeros(0, int)
        if same.size and d[same[0]] <= tolerance_mm and same[0] not in taken:
            k = int(same[0])
        else:
            free = [int(k) for k in np.argsort(d) if d[k] <= tolerance_mm and int(k) not in taken]
            if not free:
                continue
            k = free[0]
        taken.add(k)
        cmb_id[n], moved[n] = ids[k], d[k]
    attached = verdicts.assign(cmb_id=cmb_id, moved_mm=moved)
    ok = ~np.isnan(cmb_id)
    return attached[ok].reset_index(drop=True), attached[~ok].drop(
        columns=["cmb_id", "moved_mm"]
    ).reset_index(drop=True)


def _cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two raters' labels.

    >>> _cohen_kappa(["y", "y", "n", "n"], ["y", "n", "n", "n"])
    0.5
    """
    a, b = list(a), list(b)
    if not a:
        return math.nan
    labels = sorted(set(a) | set(b))
    po = sum(x == y for x, y in zip(a, b)) / len(a)
    pe = sum((a.count(lab) / len(a)) * (b.count(lab) / len(b)) for lab in labels)
    return 1.0 if pe == 1.0 else (po - pe) / (1.0 - pe)


def reviewer_agreement(
    scans: dict[str, Sequence[pd.DataFrame]], tolerance_mm: float = ATTACH_TOLERANCE_MM
) -> pd.DataFrame:
    """Agreement of every pair of reviewers over the candidates both judged (CMB or not).

    ``scans`` maps a scan key to its reviewers' verdict tables. A candidate counts for a
    pair when both gave ``accept``/``reject``, or one added it (the other then said "no
    CMB" by leaving it out). Returns one row per pair: ``reviewer_a, reviewer_b,
    n_scans, n_candidates, agreement, kappa, n_both_cmb, n_only_a, n_only_b``.
    """
    pairs: dict[tuple[str, str], dict] = {}
    for tables in scans.values():
        tables = [t for t in tables if len(t)]
        names = [str(t["reviewer"].iloc[0]) for t in tables]
        for x in range(len(tables)):
            for y in range(x + 1, len(tables)):
                (na, ta), (nb, tb) = sorted(
                    [(names[x], tables[x]), (names[y], tables[y])], key=lambda p: p[0]
                )
                ta = ta.assign(candidate_id=pd.to_numeric(ta["candidate_id"], errors="coerce"))
                tb = tb.assign(candidate_id=pd.to_numeric(tb["candidate_id"], errors="coerce"))
                rec = pairs.setdefault((na, nb), {"n_scans": 0, "a": [], "b": []})
                rec["n_scans"] += 1
                for group in _groups([ta, tb], tolerance_mm):
                    v = {t: (ta, tb)[t].iloc[r]["verdict"] for t, r in group}
                    if any(x == "added" for x in v.values()):
                        v = {t: v.get(t, "reject") for t in (0, 1)}
                    if len(v) < 2 or "unsure" in v.values():
                        continue
                    rec["a"].append("cmb" if v[0] in CMB_VERDICTS else "no")
                    rec["b"].append("cmb" if v[1] in CMB_VERDICTS else "no")
    rows = []
    for (na, nb), rec in sorted(pairs.items()):
        a, b = rec["a"], rec["b"]
        rows.append(
            {
                "reviewer_a": na,
                "reviewer_b": nb,
                "n_scans": rec["n_scans"],
                "n_candidates": len(a),
                "agreement": sum(x == y for x, y in zip(a, b)) / len(a) if a else math.nan,
                "kappa": _cohen_kappa(a, b),
                "n_both_cmb": sum(x == y == "cmb" for x, y in zip(a, b)),
                "n_only_a": sum(x == "cmb" != y for x, y in zip(a, b)),
                "n_only_b": sum(y == "cmb" != x for x, y in zip(a, b)),
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "reviewer_a",
            "reviewer_b",
            "n_scans",
            "n_candidates",
            "agreement",
            "kappa",
            "n_both_cmb",
            "n_only_a",
            "n_only_b",
        ],
    )


def review_columns(
    scans: Iterable[tuple[str, str, object]], verdict_files: Iterable
) -> pd.DataFrame:
    """The cohort table's review columns (:data:`REVIEW_COLUMNS`), one row per scan.

    Parameters
    ----------
    scans : iterable of (participant_id, session_id, detections TSV path or None)
        The cohort's scans (``session_id`` ``n/a`` or None without sessions).
    verdict_files : iterable of paths
        Every verdict file of the cohort (malformed ones raise :class:`VerdictError`).
        Files of scans not in the cohort, and verdicts whose candidate no longer exists,
        are logged as warnings; the files are never changed.
    """
    by_scan: dict[str, list[pd.DataFrame]] = {}
    for path in verdict_files:
        m = _NAME.match(Path(path).name)
        if m is None:
            raise VerdictError(
                f"{path}: not a verdict file name (<scan>_rater-<reviewer>_label-CMB_dseg.tsv)"
            )
        by_scan.setdefault(m["scan"], []).append(read_verdicts(path))
    rows, seen = [], set()
    for pid, sid, detections in scans:
        key = pid + (f"_{sid}" if sid and sid != _NA else "")
        seen.add(key)
        tables = by_scan.get(key, [])
        row = {"participant_id": pid, "session_id": sid or _NA, "n_reviewers": len(tables)}
        if not tables:
            rows.append({**row, "reviewed": _NA, "verdict": _NA, "n_cmb_reviewed": _NA})
            continue
        det = None
        if (
            detections is not None
            and Path(detections).is_file()
            and Path(detections).stat().st_size
        ):
            det = pd.read_csv(detections, sep="\t", dtype=str, keep_default_na=False)
        counted = (
            det[det["is_cmb"] == "true"] if det is not None else pd.DataFrame(columns=["cmb_id"])
        )
        judged = []
        for t in tables:
            attached, orphans = attach_verdicts(t, det if det is not None else counted)
            for o in orphans[orphans["verdict"] != "added"].itertuples():
                _log.warning(
                    "%s: %s's verdict %s at (%.1f, %.1f, %.1f) mm has no candidate within %g mm (kept in "
                    "the file, not counted)",
                    key,
                    o.reviewer,
                    o.verdict,
                    o.x_mm,
                    o.y_mm,
                    o.z_mm,
                    ATTACH_TOLERANCE_MM,
                )
            judged.append(set(attached["cmb_id"].astype(int)))
        ids = set(pd.to_numeric(counted["cmb_id"], errors="coerce").dropna().astype(int))
        cons = consensus(tables)
        n_cmb = int(cons["verdict"].isin(CMB_VERDICTS).sum())
        accepted = set(
            pd.to_numeric(cons.loc[cons["verdict"] == "accept", "candidate_id"], errors="coerce")
            .dropna()
            .astype(int)
        )
        if "disputed" in cons and cons["disputed"].any():
            verdict = "disputed"
        elif (
            (cons["verdict"] == "added").any()
            or (cons["verdict"] == "reject").any()
            or not ids <= accepted
        ):
            verdict = "corrected"
        else:
            verdict = "confirmed"
        rows.append(
            {
                **row,
                "reviewed": str(all(ids <= j for j in judged)).lower(),
                "verdict": verdict,
                "n_cmb_reviewed": str(n_cmb),
            }
        )
    for key in sorted(set(by_scan) - seen):
        _log.warning("verdicts of %s: no such scan in the cohort (kept, not counted)", key)
    return pd.DataFrame(rows, columns=["participant_id", "session_id", *REVIEW_COLUMNS]).astype(str)
