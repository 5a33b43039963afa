"""Ingestion: choose one susceptibility-weighted input per subject and session,
check it, and write it in a uniform form for preprocessing.

Two steps, called at different times:

- :func:`plan_inputs` runs when the workflow builds its DAG. It indexes the BIDS
  dataset once with pybids (the index persists in ``db_dir`` and is rebuilt only
  when the set of file names changes), chooses one input per subject/session by a
  preference order (see below and ``docs/inputs.md``) and returns one
  :class:`InputRecord` each. It reads only file names and JSON sidecars, never
  images, so it is fast and works on empty placeholder files.
- :func:`ingest_subject` runs as one job per record: it checks every file
  (:mod:`cmb.image_checks`), combines echoes (:mod:`cmb.echo_combine`), rescales
  the phase to radians (:mod:`cmb.phase_units`) and writes float32 NIfTI files
  with the original affine (not reoriented) plus a JSON report, all atomically.

Input kinds, in the default preference order (:data:`DEFAULT_PREFERENCE`):

=============  ===========================================================================
kind           files (``anat/`` or ``swi/``; ``.nii`` or ``.nii.gz``)
=============  ===========================================================================
``swi_phase``  ``*_swi`` (or ``*_part-mag_swi``) with ``*_part-phase_swi`` or a single-echo
               ``*_part-phase_GRE`` of the same entities
``gre_phase``  ``*_part-mag_GRE`` with ``*_part-phase_GRE``
``megre``      ``*_echo-<n>_part-mag_MEGRE`` (+ ``part-phase``), or one 4D ``*_MEGRE``
``swi``        ``*_swi`` without phase
``gre``        ``*_part-mag_GRE`` (or ``*_GRE``) without phase
``t2starw``    ``*_T2starw`` (the deprecated ``*_T2star`` too)
=============  ===========================================================================

Among candidates of the chosen kind the highest ``run`` wins (the latest; no run
counts as run 0), then no ``acq`` before any ``acq``, then alphabetical order of
the remaining entities. The T1w (optional) is chosen the same way from the same
session, falling back to a session-less T1w of the subject.

The input dataset is only read: the pybids database lives in ``db_dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cmb.atomic import save_nifti, write_json
from cmb.failures import InputDataError, ResourceError, run_stage

__all__ = [
    "DEFAULT_PREFERENCE",
    "KINDS",
    "InputRecord",
    "index_bids",
    "ingest_subject",
    "main",
    "plan_inputs",
    "read_sidecar",
    "sha256sum",
]

_log = logging.getLogger(__name__)

#: Accepted input kinds and what they are.
KINDS = {
    "swi_phase": "SWI image with a phase image of the same acquisition",
    "gre_phase": "single-echo GRE magnitude and phase (part-mag/part-phase _GRE)",
    "megre": "multi-echo GRE (_MEGRE), echoes combined",
    "swi": "SWI image without phase",
    "gre": "single-echo GRE magnitude without phase",
    "t2starw": "T2*-weighted GRE (_T2starw)",
}

#: Default order in which input kinds are preferred (first wins).
DEFAULT_PREFERENCE = ("swi_phase", "gre_phase", "megre", "swi", "gre", "t2starw")

_IMAGE_EXT = (".nii.gz", ".nii")
_SUFFIXES = {"swi", "GRE", "MEGRE", "T2starw", "T2star", "T1w"}
_NOT_GROUPING = {"subject", "session", "part", "echo", "suffix", "extension", "datatype"}
_INDEX_VERSION = "1"
# pybids indexes only sub-* folders and NIfTI files (derivatives, code, sidecars skipped).
_IGNORE = (r"^/(?!sub-)", r"^(?!.*\.nii(\.gz)?$).*\.[A-Za-z0-9]+$", r"/\.")


@dataclasses.dataclass
class InputRecord:
    """The chosen input of one subject/session.

    Attributes
    ----------
    subject : str
        Label without ``sub-`` (``"02"`` stays ``"02"``).
    session : str or None
        Label without ``ses-``.
    kind : str or None
        One of :data:`KINDS`; ``None`` when no usable input was found (ingestion
        then fails with ``reason``).
    magnitude : tuple of str
        One file, or several echoes in echo order.
    phase : tuple of str or None
        Matching phase file(s).
    t1w : str or None
    echo_times : tuple of float or None
        Seconds, one per magnitude echo, from the sidecars (``None`` if unknown).
    reason : str
        Why this input was chosen ("chosen X over Y because ...").
    bids_dir : str
    """

    subject: str
    session: str | None
    kind: str | None
    magnitude: tuple[str, ...]
    phase: tuple[str, ...] | None
    t1w: str | None
    echo_times: tuple[float, ...] | None
    reason: str
    bids_dir: str = ""

    @property
    def participant_id(self) -> str:
        return f"sub-{self.subject}"

    @property
    def session_id(self) -> str | None:
        return None if self.session is None else f"ses-{self.session}"

    @property
    def has_phase(self) -> bool:
        return bool(self.phase)

    @property
    def has_t1w(self) -> bool:
        return self.t1w is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputRecord:
        d = dict(d)
        for key in ("magnitude", "phase", "echo_times"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**{f.name: d.get(f.name) for f in dataclasses.fields(cls)
                      if f.name in d or f.default is dataclasses.MISSING})


# --------------------------------------------------------------------------- index


def _fingerprint(root: Path) -> str:
    """Hash of the root path and every file name under ``sub-*`` (not contents)."""
    h = hashlib.sha256(f"{_INDEX_VERSION}\0{root}\0".encode())
    names = []
    for top in sorted(os.listdir(root)):
        if not top.startswith("sub-") or not (root / top).is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root / top):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, root)
            names.extend(f"{rel}/{f}" for f in filenames if f.endswith(_IMAGE_EXT))
    for n in sorted(names):
        h.update(n.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:16]


def index_bids(bids_dir: str | os.PathLike, db_dir: str | os.PathLike):
    """A pybids ``BIDSLayout`` of ``bids_dir`` backed by a database in ``db_dir``.

    The database is kept in ``db_dir/pybids-<fingerprint>``, where the
    fingerprint hashes the dataset path and its NIfTI file names. An existing
    database with the same fingerprint is reused (about 1 s for 2,000 subjects);
    otherwise a new one is built in a temporary folder and renamed into place, so
    concurrent workflow processes never see a half-built index. Older databases
    of the same dataset are removed; several datasets may share ``db_dir``.
    """
    from bids import BIDSLayout, BIDSLayoutIndexer

    root = Path(bids_dir).absolute()
    if not root.is_dir():
        raise InputDataError(f"{root}: BIDS folder not found")
    db_dir = Path(db_dir).absolute()
    db_dir.mkdir(parents=True, exist_ok=True)
    target = db_dir / f"pybids-{_fingerprint(root)}"
    if not (target / "layout_index.sqlite").exists():
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=".pybids-", dir=db_dir))
        indexer = BIDSLayoutIndexer(validate=False, index_metadata=False,
                                    ignore=[re.compile(p) for p in _IGNORE])
        BIDSLayout(root, validate=False, database_path=tmp, reset_database=True, indexer=indexer)
        (tmp / "cmb_root.txt").write_text(str(root), encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race: use its index
            shutil.rmtree(tmp, ignore_errors=True)
        _log.info("indexed %s in %.1f s -> %s", root, time.perf_counter() - t0, target)
        for old in db_dir.glob("pybids-*"):  # older indexes of the same dataset
            stamp = old / "cmb_root.txt"
            if old != target and stamp.is_file() and stamp.read_text(encoding="utf-8") == str(root):
                shutil.rmtree(old, ignore_errors=True)
    return BIDSLayout(root, validate=False, database_path=target)


def _entities_by_file(layout) -> dict[str, dict[str, str]]:
    """Entities of every indexed file, read in one database query."""
    try:
        from bids.layout.models import Tag

        rows = layout.connection_manager.session.query(Tag.file_path, Tag.entity_name, Tag._value).all()
        out: dict[str, dict[str, str]] = defaultdict(dict)
        for path, name, value in rows:
            out[path][name] = value
        return out
    except Exception:  # noqa: BLE001 - pybids internals changed: fall back
        from pandas import isna as pd_isna

        df = layout.to_df()  # public API, slower
        return {row.pop("path"): {k: str(v) for k, v in row.items() if isinstance(v, str) or
                                  (v is not None and not pd_isna(v))} for row in df.to_dict("records")}


# --------------------------------------------------------------------------- planning


@dataclasses.dataclass
class _Candidate:
    kind: str
    magnitude: tuple[str, ...]
    phase: tuple[str, ...] | None
    entities: dict[str, str]
    note: str = ""

    def sort_key(self):
        run = self.entities.get("run")
        acq = self.entities.get("acquisition")
        rest = sorted((k, v) for k, v in self.entities.items() if k not in ("run", "acquisition"))
        return (-int(run) if run is not None and str(run).isdigit() else 0,
                acq is not None, acq or "", rest)

    def label(self) -> str:
        ents = "_".join(f"{_SHORT.get(k, k)}-{v}" for k, v in sorted(self.entities.items()))
        name = Path(self.magnitude[0]).name
        extra = f", {len(self.magnitude)} echoes" if len(self.magnitude) > 1 else ""
        return f"{self.kind} ({name}{extra}{', ' + ents if ents else ''})"


_SHORT = {"acquisition": "acq", "reconstruction": "rec", "run": "run", "ceagent": "ce"}


def _parse_name(name: str) -> tuple[dict[str, str], str]:
    """BIDS entities (key-value pairs) and suffix of a file name.

    >>> _parse_name("sub-01_ses-2_echo-1_part-mag_MEGRE.nii.gz")
    ({'sub': '01', 'ses': '2', 'echo': '1', 'part': 'mag'}, 'MEGRE')
    """
    stem = name.split(".", 1)[0]
    parts = stem.split("_")
    ents = {}
    for p in parts[:-1]:
        if "-" in p:
            k, v = p.split("-", 1)
            ents[k] = v
    return ents, parts[-1]


def _candidates(files: list[tuple[str, dict[str, str]]]) -> tuple[list[_Candidate], list[tuple]]:
    """Input candidates of one subject/session, and its T1w files as (path, entities).

    Files are taken in path order, so of ``x.nii`` and ``x.nii.gz`` the latter is used.
    """
    groups: dict[tuple, dict[str, Any]] = defaultdict(lambda: defaultdict(dict))
    t1w = []
    for path, ents in sorted(files):
        suffix = ents.get("suffix")
        if suffix == "T1w":
            t1w.append((path, ents))
            continue
        key_ents = {k: v for k, v in ents.items() if k not in _NOT_GROUPING}
        key = (Path(path).parent.name, tuple(sorted(key_ents.items())))
        part = ents.get("part") or "mag"
        echo = ents.get("echo")
        g = groups[key]
        g["_entities"] = key_ents
        g[suffix][(part, echo)] = path
    out = []
    for _, g in sorted(groups.items()):
        ents = g["_entities"]
        swi, gre, megre = g.get("swi", {}), g.get("GRE", {}), g.get("MEGRE", {})
        gre_phase = gre.get(("phase", None))
        swi_mag = swi.get(("mag", None))
        if swi_mag:
            phase = swi.get(("phase", None)) or gre_phase
            kind = "swi_phase" if phase else "swi"
            out.append(_Candidate(kind, (swi_mag,), (phase,) if phase else None, ents))
        gre_mag = gre.get(("mag", None))
        if gre_mag:
            kind = "gre_phase" if gre_phase else "gre"
            out.append(_Candidate(kind, (gre_mag,), (gre_phase,) if gre_phase else None, ents))
        mags = {e: p for (part, e), p in megre.items() if part == "mag"}
        if mags:
            echoes = sorted(mags, key=lambda e: (e is not None, int(e) if e and e.isdigit() else 0))
            phases = [megre.get(("phase", e)) for e in echoes]
            note = ""
            if any(phases) and not all(phases):
                missing = [e for e, p in zip(echoes, phases) if not p]
                note = f"phase ignored: missing for echo {', '.join(map(str, missing))}"
            phase = tuple(phases) if all(phases) else None
            out.append(_Candidate("megre", tuple(mags[e] for e in echoes), phase, ents, note))
        for suffix in ("T2starw", "T2star"):
            p = g.get(suffix, {}).get(("mag", None))
            if p:
                out.append(_Candidate("t2starw", (p,), None, ents))
    return out, t1w


def read_sidecar(path: str | os.PathLike, bids_dir: str | os.PathLike | None = None,
                 _cache: dict | None = None) -> dict[str, Any]:
    """Metadata of a BIDS file from its JSON sidecars (inheritance principle).

    JSON files with the same suffix whose entities are a subset of the file's
    entities are merged from ``bids_dir`` down to the file's folder (deeper
    wins). Unreadable sidecars are skipped with a warning.

    Parameters
    ----------
    path : path
        The data file.
    bids_dir : path, optional
        Dataset root; if omitted, only the file's own folder is searched.
    """
    path = os.path.abspath(path)
    ents, suffix = _parse_name(os.path.basename(path))
    level = os.path.dirname(path)
    levels = [level]
    if bids_dir is not None:
        root = os.path.abspath(bids_dir)
        while level != root and level.startswith(root + os.sep):
            level = os.path.dirname(level)
            levels.append(level)
    cache = {} if _cache is None else _cache
    meta: dict[str, Any] = {}
    for level in reversed(levels):
        if level not in cache:
            try:
                names = sorted(n for n in os.listdir(level) if n.endswith(".json"))
            except OSError:
                names = []
            cache[level] = [(n, *_parse_name(n)) for n in names]
        matches = sorted((len(e), n) for n, e, s in cache[level]
                         if s == suffix and all(ents.get(k) == v for k, v in e.items()))
        for _, n in matches:
            sidecar = os.path.join(level, n)
            try:
                with open(sidecar, encoding="utf-8") as f:
                    data = json.load(f)
                if isinstance(data, dict):
                    meta.update(data)
            except (OSError, ValueError) as exc:
                _log.warning("%s: unreadable JSON sidecar skipped (%s)", sidecar, exc)
    return meta


def _echo_times(files: Sequence[str], bids_dir, cache) -> tuple[float, ...] | None:
    times: list[float] = []
    for f in files:
        te = read_sidecar(f, bids_dir, cache).get("EchoTime")
        if isinstance(te, (int, float)):
            times.append(float(te))
        elif isinstance(te, list) and len(files) == 1 and all(isinstance(t, (int, float)) for t in te):
            times.extend(float(t) for t in te)
        else:
            return None
    return tuple(times)


def _choose(cands: list[_Candidate], preference: Sequence[str]) -> tuple[_Candidate | None, str]:
    found = sorted({c.kind for c in cands}, key=lambda k: list(KINDS).index(k))
    usable = [c for c in cands if c.kind in preference]
    if not usable:
        what = ", ".join(c.label() for c in cands) if cands else "no SWI/GRE/MEGRE/T2starw image"
        return None, (f"no usable input: found {what}; accepted kinds in order: "
                      f"{' > '.join(preference)}")
    best_kind = min(usable, key=lambda c: list(preference).index(c.kind)).kind
    same = sorted((c for c in usable if c.kind == best_kind), key=_Candidate.sort_key)
    chosen = same[0]
    reason = f"chosen {chosen.label()}"
    others = [k for k in found if k != best_kind and k in preference]
    if others:
        reason += (f" over {', '.join(others)} because {best_kind} comes first in the preference "
                   f"order {' > '.join(preference)}")
    if len(same) > 1:
        reason += (f"; {len(same) - 1} other {best_kind} candidate(s) ("
                   + ", ".join(c.label() for c in same[1:])
                   + ") lose to the highest run, then no acq, then alphabetical entities")
    ignored = [k for k in found if k not in preference]
    if ignored:
        reason += f"; not in the preference order, ignored: {', '.join(ignored)}"
    if chosen.note:
        reason += f"; {chosen.note}"
    return chosen, reason


def _choose_t1w(t1w_here, t1w_subject) -> tuple[str | None, str]:
    for pool, where in ((t1w_here, "same session"), (t1w_subject, "subject level, no session")):
        if pool:
            cands = sorted((_Candidate("t1w", (p,), None,
                                       {k: v for k, v in e.items() if k not in _NOT_GROUPING})
                            for p, e in pool), key=_Candidate.sort_key)
            note = f"T1w {Path(cands[0].magnitude[0]).name} ({where}"
            note += f", chosen among {len(cands)})" if len(cands) > 1 else ")"
            return cands[0].magnitude[0], note
    return None, "no T1w"


def _labels(values, name: str) -> set[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    out = set()
    for v in values:
        if not isinstance(v, str):
            raise TypeError(f"{name} values must be strings (quote them in YAML, e.g. '02'), "
                            f"got {v!r}")
        out.add(v.removeprefix("sub-"))
    return out


def _participants_tsv(root: Path) -> list[str]:
    path = root / "participants.tsv"
    if not path.is_file():
        _log.warning("%s: no participants.tsv; subjects are taken from the sub-* folders", root)
        return []
    try:
        import pandas as pd

        ids = pd.read_csv(path, sep="\t", dtype=str)["participant_id"].dropna()
        return [i.removeprefix("sub-") for i in ids]
    except Exception as exc:  # noqa: BLE001 - a broken participants.tsv is not fatal
        _log.warning("%s: unreadable participants.tsv ignored (%s)", path, exc)
        return []


def plan_inputs(
    bids_dir: str | os.PathLike,
    db_dir: str | os.PathLike,
    participant_label: str | Sequence[str] | None = None,
    exclude_participant_label: str | Sequence[str] | None = None,
    preference: Sequence[str] | None = None,
) -> list[InputRecord]:
    """Choose one input per subject/session of a BIDS dataset.

    Parameters
    ----------
    bids_dir : path
        The raw BIDS dataset (read only).
    db_dir : path
        Folder for the persistent pybids index (outside ``bids_dir``).
    participant_label, exclude_participant_label : str or sequence of str, optional
        Labels with or without ``sub-``; strings only (``"02"`` is not ``"2"``).
    preference : sequence of str, optional
        Input kinds (:data:`KINDS`) in order of preference; kinds left out are
        never used. Default :data:`DEFAULT_PREFERENCE`.

    Returns
    -------
    list of InputRecord
        Sorted by subject and session. Subjects without a usable input (or listed
        in ``participants.tsv`` without any image) get ``kind=None``.

    Raises
    ------
    ValueError
        An unknown kind in ``preference``, or a ``participant_label`` not in the dataset.
    """
    preference = tuple(DEFAULT_PREFERENCE if preference is None else preference)
    unknown = [k for k in preference if k not in KINDS]
    if unknown or not preference:
        raise ValueError(f"unknown input kind(s) {unknown} in preference; choose from {list(KINDS)}")
    include = _labels(participant_label, "participant_label")
    exclude = _labels(exclude_participant_label, "exclude_participant_label") or set()
    root = Path(bids_dir).absolute()
    if not (root / "dataset_description.json").is_file():
        _log.warning("%s: no dataset_description.json (indexed anyway)", root)
    layout = index_bids(root, db_dir)
    by_subject: dict[str, dict[str | None, list]] = defaultdict(lambda: defaultdict(list))
    for path, ents in _entities_by_file(layout).items():
        if not path.endswith(_IMAGE_EXT) or ents.get("suffix") not in _SUFFIXES or "subject" not in ents:
            continue
        by_subject[ents["subject"]][ents.get("session")].append((path, ents))
    subjects = set(by_subject) | set(_participants_tsv(root))
    if include is not None:
        missing = sorted(include - subjects)
        if missing:
            raise ValueError(f"participant_label {missing} not found in {root}")
        subjects &= include
    subjects -= exclude
    records = []
    cache: dict = {}
    for sub in sorted(subjects):
        sessions = by_subject.get(sub, {})
        if not sessions:
            records.append(InputRecord(sub, None, None, (), None, None, None,
                                       "listed in participants.tsv but no image files found", str(root)))
            continue
        t1w_subject = [(p, e) for p, e in sessions.get(None, []) if e.get("suffix") == "T1w"]
        keys = [s for s in sessions if s is not None] or [None]
        if None in sessions and any(e.get("suffix") != "T1w" for _, e in sessions[None]) and keys != [None]:
            keys.append(None)
        for ses in sorted(keys, key=lambda s: (s is None, s or "")):
            cands, t1w_here = _candidates(sessions.get(ses, []))
            chosen, reason = _choose(cands, preference)
            t1w, t1w_note = _choose_t1w(t1w_here, t1w_subject if ses is not None else [])
            if chosen is None:
                records.append(InputRecord(sub, ses, None, (), None, t1w, None,
                                           f"{reason}; {t1w_note}", str(root)))
                continue
            records.append(InputRecord(
                sub, ses, chosen.kind, chosen.magnitude, chosen.phase, t1w,
                _echo_times(chosen.magnitude, root, cache), f"{reason}; {t1w_note}", str(root)))
    return records


# --------------------------------------------------------------------------- ingestion


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's content (symlinks followed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def ingest_subject(
    record: InputRecord | dict,
    out_mag: str | os.PathLike,
    out_phase: str | os.PathLike | None = None,
    out_t1w: str | os.PathLike | None = None,
    out_json: str | os.PathLike | None = None,
    *,
    phase_echo: int | None = None,
    phase_units: str = "auto",
    echo_method: str = "rms",
    min_fov_mm: float | None = 60.0,
    max_voxel_mm: float = 5.0,
    max_nonfinite_fraction: float = 0.01,
    grid_atol_mm: float = 0.01,
) -> dict[str, Any]:
    """Check, combine and rescale one subject/session's input; write it out.

    Parameters
    ----------
    record : InputRecord or dict
        From :func:`plan_inputs` (a dict as from :meth:`InputRecord.to_dict`).
    out_mag : path
        Magnitude (echo-combined for ``megre``) NIfTI, float32, original affine.
    out_phase, out_t1w : path, optional
        Phase in radians [-pi, pi) and T1w; written only when given. Asking for
        one the record does not have is an error.
    out_json : path, optional
        The ingest report (chosen files with SHA-256, reason, fixes, sidecar
        metadata), written last.
    phase_echo : int, optional
        Echo of a multi-echo phase (1-based; see :func:`cmb.echo_combine.choose_phase_echo`).
    phase_units : str, optional
        ``"auto"`` or a unit of :data:`cmb.phase_units.UNITS`.
    echo_method : {"rms", "mean"}
        Magnitude echo combination.
    min_fov_mm, max_voxel_mm, max_nonfinite_fraction : optional
        Limits of :func:`cmb.image_checks.load_image`.
    grid_atol_mm : float, optional
        Tolerance when comparing magnitude and phase grids.

    Returns
    -------
    dict
        The report.

    Raises
    ------
    cmb.failures.InputDataError
        Missing modality or a bad file; the message names the file.
    """
    from cmb import __version__
    from cmb.echo_combine import combine_echoes
    from cmb.image_checks import load_image, voxel_sizes
    from cmb.phase_units import phase_scaling

    rec = record if isinstance(record, InputRecord) else InputRecord.from_dict(record)
    where = Path(rec.bids_dir or ".") / rec.participant_id / (rec.session_id or "")
    if rec.kind is None or not rec.magnitude:
        raise InputDataError(f"{where}: missing modality: {rec.reason}")
    if out_phase is not None and not rec.has_phase:
        raise InputDataError(f"{where}: phase output requested but {rec.magnitude[0]} has no phase image")
    if out_t1w is not None and not rec.has_t1w:
        raise InputDataError(f"{where}: T1w output requested but no T1w image was found")
    checks = {"min_fov_mm": min_fov_mm, "max_voxel_mm": max_voxel_mm,
              "max_nonfinite_fraction": max_nonfinite_fraction}
    _log.info("%s %s: %s", rec.participant_id, rec.session_id or "", rec.reason)

    combo = combine_echoes(list(rec.magnitude), list(rec.phase) if out_phase is not None else None,
                           echo_times=rec.echo_times, phase_echo=phase_echo, method=echo_method,
                           allow_4d=rec.kind == "megre", grid_atol_mm=grid_atol_mm, **checks)
    fixes = list(combo.messages)
    units = None
    if combo.phase is not None:
        # detect on all echoes together: they share one encoding, and a short first
        # echo alone may not fill its range
        scaling = phase_scaling(combo.phase_all_echoes, phase_units, rec.phase[0])
        units = {"units": scaling.units, "description": scaling.description}
        fixes.append(f"{rec.phase[0]}: {scaling.description}")
        combo.phase = _replace_data(combo.phase, scaling.apply(np.asanyarray(combo.phase.dataobj)))
    t1w_img = None
    if out_t1w is not None:
        t1w_img, more = load_image(rec.t1w, **checks)
        fixes += more
    for msg in fixes:
        _log.info(msg)

    save_nifti(combo.magnitude, out_mag)
    if combo.phase is not None:
        save_nifti(combo.phase, out_phase)
    if t1w_img is not None:
        save_nifti(t1w_img, out_t1w)

    cache: dict = {}
    meta = read_sidecar(rec.magnitude[0], rec.bids_dir or None, cache)
    report = {
        "participant_id": rec.participant_id,
        "session_id": rec.session_id,
        "kind": rec.kind,
        "reason": rec.reason,
        "inputs": {
            "magnitude": [{"path": p, "sha256": sha256sum(p)} for p in rec.magnitude],
            "phase": ([{"path": p, "sha256": sha256sum(p)} for p in rec.phase]
                      if combo.phase is not None else None),
            "t1w": {"path": rec.t1w, "sha256": sha256sum(rec.t1w)} if t1w_img is not None else None,
        },
        "outputs": {"magnitude": str(out_mag),
                    "phase": None if out_phase is None else str(out_phase),
                    "t1w": None if out_t1w is None else str(out_t1w)},
        "echo_times": list(rec.echo_times) if rec.echo_times else None,
        "n_echoes": combo.n_echoes,
        "echo_combination": echo_method if rec.kind == "megre" else None,
        "phase_echo": combo.phase_echo,
        "phase_units": units,
        "fixes": fixes,
        "metadata": {k: meta.get(k) for k in ("EchoTime", "MagneticFieldStrength", "Manufacturer",
                                               "ManufacturersModelName", "RepetitionTime", "FlipAngle")
                     if k in meta},
        "shape": list(combo.magnitude.shape),
        "voxel_size_mm": [round(float(v), 6) for v in voxel_sizes(combo.magnitude.affine)],
        "cmb_version": __version__,
    }
    if out_json is not None:
        write_json(out_json, report)
    return report


def _replace_data(img, data):
    import nibabel as nib

    out = nib.Nifti1Image(np.asarray(data, dtype=np.float32), img.affine, img.header.copy())
    out.header.set_data_dtype(np.float32)
    out.header.set_slope_inter(1.0, 0.0)
    return out


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cmb.ingest", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="choose one input per subject/session; print JSON records")
    plan.add_argument("--bids-dir", required=True)
    plan.add_argument("--db-dir", required=True, help="folder for the persistent pybids index")
    plan.add_argument("--participant-label", nargs="+")
    plan.add_argument("--exclude-participant-label", nargs="+")
    plan.add_argument("--preference", nargs="+", choices=list(KINDS))
    plan.add_argument("--out", help="write the records here (JSON) instead of stdout")

    run = sub.add_parser("run", help="ingest one subject/session")
    run.add_argument("--subject", required=True, help="label, e.g. 02")
    run.add_argument("--session")
    run.add_argument("--kind", required=True, choices=[*KINDS, "none"],
                     help="input kind; 'none' records a subject without usable input (fails)")
    run.add_argument("--mag", nargs="+", default=[], help="magnitude file(s), echoes in order")
    run.add_argument("--phase", nargs="+", help="phase file(s), echoes in order")
    run.add_argument("--t1w")
    run.add_argument("--echo-times", nargs="+", type=float, help="seconds, one per echo")
    run.add_argument("--reason", default="", help="why this input was chosen (for the report)")
    run.add_argument("--bids-dir", default="", help="dataset root, for sidecar inheritance")
    run.add_argument("--out-mag", required=True)
    run.add_argument("--out-phase")
    run.add_argument("--out-t1w")
    run.add_argument("--out-json", required=True)
    run.add_argument("--phase-echo", type=int)
    run.add_argument("--phase-units", default="auto")
    run.add_argument("--echo-method", default="rms", choices=["rms", "mean"])
    run.add_argument("--min-fov-mm", type=float, default=60.0, help="0 disables the check")
    run.add_argument("--max-voxel-mm", type=float, default=5.0)
    run.add_argument("--max-nonfinite-fraction", type=float, default=0.01)
    run.add_argument("--failure-record",
                     help="soft failure: write a status record here, placeholders on error, exit 0")
    run.add_argument("--log", help="log file path recorded in the failure record")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see ``python -m cmb.ingest --help``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "plan":
        records = plan_inputs(args.bids_dir, args.db_dir, args.participant_label,
                              args.exclude_participant_label, args.preference)
        text = json.dumps([r.to_dict() for r in records], indent=2)
        if args.out:
            write_json(args.out, [r.to_dict() for r in records])
        else:
            print(text)
        return 0
    kind = None if args.kind == "none" else args.kind
    record = InputRecord(args.subject, args.session, kind, tuple(args.mag),
                         tuple(args.phase) if args.phase else None, args.t1w,
                         tuple(args.echo_times) if args.echo_times else None,
                         args.reason or "given on the command line", args.bids_dir)

    def work():
        ingest_subject(record, args.out_mag, args.out_phase, args.out_t1w, args.out_json,
                       phase_echo=args.phase_echo, phase_units=args.phase_units,
                       echo_method=args.echo_method, min_fov_mm=args.min_fov_mm or None,
                       max_voxel_mm=args.max_voxel_mm,
                       max_nonfinite_fraction=args.max_nonfinite_fraction)

    if args.failure_record is None:
        try:
            work()
        except InputDataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    outputs = [o for o in (args.out_mag, args.out_phase, args.out_t1w, args.out_json) if o]
    try:
        rec = run_stage("ingest", args.subject, args.session, outputs, args.failure_record, args.log, work)
    except ResourceError as exc:  # disk full etc.: a hard failure, so that a rerun redoes it
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if rec["status"] != "ok":
        print(f"ingest {rec['status']}: {rec['message']}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
