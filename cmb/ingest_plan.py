"""Input planning: which files of a BIDS dataset are each subject's SWI/GRE input.

:func:`plan_inputs` runs when the workflow builds its DAG (and for ``cmb plan``).
It indexes the dataset once with pybids (the index persists in ``db_dir``), reads
file names, JSON sidecars and, for single-file GRE/SWI images, the NIfTI header
(cached), and returns one :class:`InputRecord` per subject and session: the
chosen files, the other candidates of the same kind (ingestion picks among them
by image quality, :func:`cmb.image_checks.ghosting_index`), every file it ignored
and why. It never reads voxels and never writes into the dataset.

How a file is understood (``docs/inputs.md`` lists the layouts with example trees):

- **Folder**: images under ``anat/`` and ``swi/`` (BEP004) are considered; other
  datatypes (``fmap/``, ``func/``...) never are.
- **Suffix**, case-insensitive: ``swi``/``SWI``; ``GRE``, ``MEGRE``,
  ``T2starw``/``T2Starw``/``T2star`` and ``magnitude``/``phase`` (as in
  ``acq-qsm_magnitude``) are gradient echo; ``T1w``.
- **Magnitude or phase**: the ``part-`` entity, else a ``magnitude``/``phase``
  suffix, else an ``acq-`` that names it (``acq-mag``, ``acq-phase``; MPI-LEMON,
  ds000221), else the sidecar ``ImageType`` (``P``/``PHASE`` vs ``M``/``MAGNITUDE``);
  a name that contradicts ``ImageType`` is noted in the reason. ``part-real``/
  ``part-imag`` are not used.
- **Echoes**: ``echo-`` entities, or a 4D file (several echoes in one NIfTI).
  Two or more echoes make a ``megre`` input whatever the suffix.
- **Never inputs**: projections (``rec-minIP``/``rec-MIP``..., or ``ImageType``
  with MIN IP, MIP, MNIP or PROJECTION IMAGE), single-coil images (``coil-``),
  non-head body parts (a ``bp-`` entity or ``BodyPartExamined`` other than the
  ``ingest.body_parts`` setting), a phase without magnitude, 4D SWI or T1w.

Input kinds, in the default preference order (:data:`DEFAULT_PREFERENCE`):

=============  =============================================================================
kind           what
=============  =============================================================================
``swi_phase``  an SWI magnitude with a phase of the same entities (``part-phase_swi`` or a
               single-echo ``part-phase_GRE``)
``gre_phase``  a single-echo GRE magnitude with its phase (``_GRE``, ``_T2starw``, ``_magnitude``)
``megre``      two or more echoes (``echo-<n>`` files or one 4D file), phase if every echo has one
``swi``        an SWI image without phase
``gre``        a single-echo ``_GRE``/``_magnitude`` without phase
``t2starw``    a single-echo ``_T2starw`` (or the deprecated ``_T2star``) without phase
=============  =============================================================================

Choice: the ``ingest.pin_entities`` setting first keeps only files with the given
entities (for example ``{image: {task: still, acq: t2starPMCon}, t1w: {acq: mpragePMCon}}``);
then the most preferred kind wins. Several candidates of that kind (runs, ``acq``,
``rec``, ``task``...) all go to ingestion, which reads them and keeps the one
with the least ghosting (motion), recording the figures; the provisional order,
used for ties, is the highest run, then no ``acq`` before any ``acq``, then
alphabetical entities. The T1w (optional) is chosen the same way from the same
session, else from the subject level.
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import pandas as pd

from cmb.atomic import write_json
from cmb.config import default
from cmb.failures import InputDataError

__all__ = [
    "DEFAULT_BODY_PARTS",
    "DEFAULT_PREFERENCE",
    "KINDS",
    "InputRecord",
    "format_plan",
    "index_bids",
    "parse_bids_name",
    "plan_inputs",
    "plan_from_config",
    "read_sidecar",
]

_log = logging.getLogger(__name__)

#: Accepted input kinds and what they are.
KINDS = {
    "swi_phase": "SWI image with a phase image of the same acquisition",
    "gre_phase": "single-echo GRE magnitude and phase (_GRE, _T2starw or _magnitude with its phase)",
    "megre": "multi-echo GRE (echo- files or one 4D file), echoes combined",
    "swi": "SWI image without phase",
    "gre": "single-echo GRE magnitude without phase",
    "t2starw": "T2*-weighted GRE (_T2starw) without phase",
}

#: Default order in which input kinds are preferred (first wins).
DEFAULT_PREFERENCE = tuple(default("ingest", "preference"))

#: DICOM BodyPartExamined values (and ``bp-`` labels, case-insensitive) accepted as a head scan.
DEFAULT_BODY_PARTS = tuple(default("ingest", "body_parts"))

_IMAGE_EXT = (".nii.gz", ".nii")
_DATATYPES = ("anat", "swi")
# canonical suffix of each accepted spelling; "magnitude"/"phase" suffixes are GRE parts
_SUFFIX = {
    "swi": "swi",
    "gre": "GRE",
    "megre": "MEGRE",
    "t2starw": "T2starw",
    "t2star": "T2starw",
    "magnitude": "GRE",
    "mag": "GRE",
    "phase": "GRE",
    "pha": "GRE",
    "t1w": "T1w",
}
_PART_WORDS = {
    "mag": "mag",
    "magnitude": "mag",
    "m": "mag",
    "phase": "phase",
    "pha": "phase",
    "ph": "phase",
    "p": "phase",
    "real": "real",
    "imag": "imag",
    "imaginary": "imag",
}
_PROJECTION_RECS = re.compile(r"^(min|max|mn|mx)?ip$|^m(in|ax)?ip|proj", re.IGNORECASE)
_PROJECTION_TYPES = {
    "MIN IP",
    "MINIP",
    "MNIP",
    "MIP",
    "MAX IP",
    "MAXIP",
    "PROJECTION IMAGE",
    "MIN_IP",
    "MAX_IP",
}
# DICOM ImageType values of a phase or magnitude image (Siemens P/M, GE PHASE/FILT_PHA, Philips P_FFE/M_FFE)
_PHASE_TYPES = {"P", "PHASE", "FILT_PHA", "PHASE MAP"}
_MAGNITUDE_TYPES = {"M", "MAGNITUDE"}
_NOT_GROUPING = {"sub", "ses", "part", "echo"}
_INDEX_VERSION = "1"
# pybids indexes only sub-* folders and NIfTI files (derivatives, code, sidecars skipped).
_IGNORE = (r"^/(?!sub-)", r"^(?!.*\.nii(\.gz)?$).*\.[A-Za-z0-9]+$", r"/\.")
_LONG_ENTITY = {
    "acquisition": "acq",
    "reconstruction": "rec",
    "session": "ses",
    "subject": "sub",
    "ceagent": "ce",
    "direction": "dir",
    "bodypart": "bp",
}


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
        One file, or several echoes in echo order (the provisional choice when
        ``alternatives`` has several entries).
    phase : tuple of str or None
        Matching phase file(s).
    t1w : str or None
    echo_times : tuple of float or None
        Seconds, one per magnitude echo, from the sidecars (``None`` if unknown).
    reason : str
        Why this input was chosen ("chosen X over Y because ...").
    bids_dir : str
    alternatives : tuple of dict
        Every candidate of the chosen kind (``magnitude``, ``phase``,
        ``echo_times``, ``label``), the provisional one first; ingestion picks
        among them by image quality. Empty for a single candidate.
    t1w_alternatives : tuple of str
        The same for the T1w.
    ignored : tuple of str
        One line per file that was not used, with the reason.
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
    alternatives: tuple[dict, ...] = ()
    t1w_alternatives: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

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

    def input_files(self) -> list[str]:
        """Every file ingestion may read: the provisional choice and the alternatives."""
        files = list(self.magnitude) + list(self.phase or ())
        for alt in self.alternatives:
            files += [f for f in (*alt["magnitude"], *(alt.get("phase") or ())) if f not in files]
        return files

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputRecord:
        d = dict(d)
        for key in (
            "magnitude",
            "phase",
            "echo_times",
            "alternatives",
            "t1w_alternatives",
            "ignored",
        ):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(
            **{
                f.name: d.get(f.name)
                for f in dataclasses.fields(cls)
                if f.name in d or f.default is dataclasses.MISSING
            }
        )


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
    # lazy: pybids takes ~0.6 s to import; the ingest stage imports this module for its
    # records and never indexes a dataset
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
        indexer = BIDSLayoutIndexer(
            validate=False, index_metadata=False, ignore=[re.compile(p) for p in _IGNORE]
        )
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


def _indexed_files(layout) -> dict[str, dict[str, str]]:
    """Subject and session of every indexed file (pybids entity names), in one query."""
    try:
        from bids.layout.models import Tag

        rows = layout.connection_manager.session.query(
            Tag.file_path, Tag.entity_name, Tag._value
        ).all()
        out: dict[str, dict[str, str]] = defaultdict(dict)
        for path, name, value in rows:
            out[path][name] = value
        return out
    except Exception:  # noqa: BLE001 - pybids internals changed: fall back
        df = layout.to_df()  # public API, slower
        return {
            row.pop("path"): {
                k: str(v)
                for k, v in row.items()
                if isinstance(v, str) or (v is not None and not pd.isna(v))
            }
            for row in df.to_dict("records")
        }


# --------------------------------------------------------------------------- names and sidecars


def parse_bids_name(name: str) -> tuple[dict[str, str], str]:
    """The key-value entities (short keys, in file order) and suffix of a file name.

    Every ``key-value`` part counts, also entities that pybids does not know
    (``coil-``, ``bp-``), so that two files differing only in them stay apart.

    >>> parse_bids_name("sub-01_ses-2_echo-1_part-mag_MEGRE.nii.gz")
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


def read_sidecar(
    path: str | os.PathLike, bids_dir: str | os.PathLike | None = None, _cache: dict | None = None
) -> dict[str, Any]:
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
    ents, suffix = parse_bids_name(os.path.basename(path))
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
            cache[level] = [(n, *parse_bids_name(n)) for n in names]
        matches = sorted(
            (len(e), n)
            for n, e, s in cache[level]
            if s == suffix and all(ents.get(k) == v for k, v in e.items())
        )
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


def _image_type(meta: Mapping[str, Any]) -> list[str]:
    value = meta.get("ImageType")
    if isinstance(value, str):
        value = re.split(r"[\\/,]", value)
    return [str(v).strip().upper() for v in value] if isinstance(value, list) else []


class _HeaderCache:
    """NIfTI shapes read from headers only, kept in ``db_dir`` between plannings."""

    def __init__(self, db_dir: Path):
        self.path = db_dir / "nifti-shapes.json"
        try:
            self.shapes = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.shapes = {}
        self.dirty = False

    def shape(self, path: str) -> tuple[int, ...] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = f"{st.st_size}:{st.st_mtime_ns}"
        hit = self.shapes.get(path)
        if hit and hit[0] == key:
            return tuple(hit[1]) if hit[1] is not None else None
        shape = None
        if st.st_size >= 348:  # an empty placeholder has no header
            try:
                shape = tuple(int(n) for n in nib.load(path).shape)
            except Exception:  # noqa: BLE001 - unreadable: ingestion reports it with the reason
                shape = None
        self.shapes[path] = [key, shape]
        self.dirty = True
        return shape

    def save(self) -> None:
        if self.dirty:
            try:
                write_json(self.path, self.shapes)
            except OSError as exc:
                _log.warning("%s: NIfTI shape cache not written (%s)", self.path, exc)


# --------------------------------------------------------------------------- one file's role


@dataclasses.dataclass
class _Volume:
    path: str
    datatype: str
    suffix: str  # canonical: swi, GRE, MEGRE, T2starw, T1w
    part: str  # mag, phase, real, imag
    echo: str | None
    group: dict[str, str]  # entities that tell acquisitions apart
    n_volumes: int  # 4th dimension from the header (1 when unknown)
    note: str = ""


def _volume(
    path: str, meta: Mapping[str, Any], headers: _HeaderCache, body_parts: Sequence[str]
) -> tuple[_Volume | None, str | None]:
    """The role of one image file, or ``(None, why it is not an input)``; ``(None, None)``
    for files that are simply not SWI/GRE/T1w images."""
    name = os.path.basename(path)
    datatype = os.path.basename(os.path.dirname(path))
    ents, raw_suffix = parse_bids_name(name)
    suffix = _SUFFIX.get(raw_suffix.lower())
    if suffix is None or datatype not in _DATATYPES:
        return None, None
    image_type = _image_type(meta)
    part, source = None, ""
    if "part" in ents:
        part, source = _PART_WORDS.get(ents["part"].lower(), ents["part"].lower()), "part- entity"
    elif raw_suffix.lower() in ("magnitude", "mag", "phase", "pha"):
        part, source = _PART_WORDS[raw_suffix.lower()], f"_{raw_suffix} suffix"
    elif ents.get("acq", "").lower() in ("mag", "magnitude", "phase", "pha", "ph"):
        part, source = _PART_WORDS[ents["acq"].lower()], f"acq-{ents['acq']}"
    group = {k: v for k, v in ents.items() if k not in _NOT_GROUPING}
    if source.startswith("acq-"):
        group.pop("acq")
    typed = (
        "phase"
        if any(t in _PHASE_TYPES or t.startswith("P_") for t in image_type)
        else "mag"
        if any(t in _MAGNITUDE_TYPES or t.startswith("M_") for t in image_type)
        else None
    )
    note = ""
    if part is None:
        part = typed or "mag"
        if typed:
            note = (
                f"{name}: {'phase' if typed == 'phase' else 'magnitude'} by its sidecar ImageType"
            )
    elif typed and typed != part and part in ("mag", "phase"):
        note = (
            f"{name}: the name says {part} ({source}) but the sidecar ImageType {image_type} "
            f"says {typed}; the name is followed"
        )
    rec = ents.get("rec", "")
    if _PROJECTION_RECS.search(rec) or _PROJECTION_TYPES & set(image_type):
        what = f"rec-{rec}" if _PROJECTION_RECS.search(rec) else f"ImageType {image_type}"
        return None, f"{name}: a projection image ({what}), never a valid input"
    if "coil" in ents:
        return None, (
            f"{name}: a single-coil image (coil-{ents['coil']}); the coil-combined image "
            f"is the input"
        )
    allowed = {b.upper() for b in body_parts}
    body = ents.get("bp") or meta.get("BodyPartExamined")
    if (
        isinstance(body, str)
        and body.strip()
        and body.strip().upper().replace(" ", "") not in allowed
    ):
        where = f"bp-{ents['bp']}" if "bp" in ents else f"sidecar BodyPartExamined {body!r}"
        return None, (
            f"{name}: not a head scan ({where}); accepted body parts: "
            f"{', '.join(sorted(allowed))} (setting ingest.body_parts)"
        )
    if part in ("real", "imag"):
        return None, f"{name}: part-{ents['part']} is not used (give magnitude and phase images)"
    n_volumes = 1
    if suffix != "T1w" and "echo" not in ents:
        shape = headers.shape(path)
        if shape is not None and len(shape) == 4:
            n_volumes = shape[3]
        if shape is not None and (len(shape) > 4 or (n_volumes > 1 and suffix == "swi")):
            return (
                None,
                f"{name}: {len(shape)}D image of shape {shape}; an SWI input must be one 3D volume",
            )
    return _Volume(path, datatype, suffix, part, ents.get("echo"), group, n_volumes, note), None


# --------------------------------------------------------------------------- candidates


@dataclasses.dataclass
class _Candidate:
    kind: str
    magnitude: tuple[str, ...]
    phase: tuple[str, ...] | None
    entities: dict[str, str]
    note: str = ""

    def sort_key(self):
        run = self.entities.get("run")
        acq = self.entities.get("acq")
        rest = sorted((k, v) for k, v in self.entities.items() if k not in ("run", "acq"))
        return (
            -int(run) if run is not None and str(run).isdigit() else 0,
            acq is not None,
            acq or "",
            rest,
        )

    def label(self) -> str:
        ents = "_".join(f"{k}-{v}" for k, v in sorted(self.entities.items()))
        name = Path(self.magnitude[0]).name
        extra = f", {len(self.magnitude)} echoes" if len(self.magnitude) > 1 else ""
        return f"{self.kind} ({name}{extra}{', ' + ents if ents else ''})"


def _echo_order(echo: str | None):
    return (echo is not None, int(echo) if echo and echo.isdigit() else 0, echo or "")


def _candidates(volumes: list[_Volume]) -> tuple[list[_Candidate], list[_Volume], list[str]]:
    """Input candidates of one subject/session, its T1w volumes and the files left out.

    Files are taken in path order, so of ``x.nii`` and ``x.nii.gz`` the latter is used.
    """
    groups: dict[tuple, dict[tuple, _Volume]] = defaultdict(dict)
    entities: dict[tuple, dict[str, str]] = {}
    t1w, ignored = [], []
    for v in sorted(volumes, key=lambda v: v.path):
        if v.suffix == "T1w":
            if v.part == "mag":
                t1w.append(v)
            else:
                ignored.append(f"{Path(v.path).name}: a T1w {v.part} image is not a T1w input")
            continue
        key = (v.datatype, tuple(sorted(v.group.items())))
        entities[key] = v.group
        slot = (v.suffix, v.part, v.echo)
        old = groups[key].get(slot)
        if old is not None and Path(old.path).name.split(".")[0] != Path(v.path).name.split(".")[0]:
            ignored.append(
                f"{Path(old.path).name}: same acquisition, part and echo as {Path(v.path).name}"
            )
        groups[key][slot] = v
    out = []
    for key, slots in sorted(groups.items()):
        ents = entities[key]

        def get(suffix, part, echo=None):
            v = slots.get((suffix, part, echo))
            return v.path if v else None

        used: set[str] = set()
        swi_mag = get("swi", "mag")
        gre_single_phase = (
            get("GRE", "phase")
            if not any(s == "GRE" and e is not None for s, _, e in slots)
            else None
        )
        if swi_mag:
            phase = get("swi", "phase") or gre_single_phase
            out.append(
                _Candidate(
                    "swi_phase" if phase else "swi", (swi_mag,), (phase,) if phase else None, ents
                )
            )
            used |= {swi_mag, phase}
        for suffix in ("GRE", "MEGRE", "T2starw"):
            mags = {e: v for (s, p, e), v in slots.items() if s == suffix and p == "mag"}
            phases = {e: v for (s, p, e), v in slots.items() if s == suffix and p == "phase"}
            if not mags:
                continue
            echoes = sorted(mags, key=_echo_order)
            one = mags[echoes[0]]
            note = "; ".join(v.note for v in (*mags.values(), *phases.values()) if v.note)
            multi = len(echoes) > 1 or suffix == "MEGRE" or one.n_volumes > 1
            if multi:
                ph = [phases.get(e) for e in echoes]
                if any(ph) and not all(ph):
                    missing = [e for e, p in zip(echoes, ph) if not p]
                    note = "; ".join(
                        filter(
                            None,
                            [
                                note,
                                f"phase ignored: missing for echo {', '.join(map(str, missing))}",
                            ],
                        )
                    )
                if len(echoes) == 1 and one.n_volumes > 1:
                    note = "; ".join(
                        filter(
                            None, [note, f"{Path(one.path).name} holds {one.n_volumes} echoes (4D)"]
                        )
                    )
                phase = tuple(p.path for p in ph) if all(ph) else None
                out.append(
                    _Candidate("megre", tuple(mags[e].path for e in echoes), phase, ents, note)
                )
            else:
                ph = phases.get(echoes[0])
                kind = "gre_phase" if ph else ("t2starw" if suffix == "T2starw" else "gre")
                out.append(_Candidate(kind, (one.path,), (ph.path,) if ph else None, ents, note))
            used |= {v.path for v in mags.values()} | {v.path for v in phases.values()}
        for (s, p, e), v in slots.items():
            if v.path not in used:
                ignored.append(f"{Path(v.path).name}: a {p} image without its magnitude")
    return out, t1w, ignored


def _pin_matches(entities: Mapping[str, str], pins: Mapping[str, str]) -> bool:
    return all(entities.get(k) == v for k, v in pins.items())


def _normalize_pins(pins: Mapping[str, Any] | None, setting: str) -> dict[str, str]:
    out = {}
    for k, v in (pins or {}).items():
        if not isinstance(v, str):
            raise TypeError(
                f"{setting}: entity values must be strings (quote them in YAML), got {k}: {v!r}"
            )
        out[_LONG_ENTITY.get(k, k)] = v
    return out


def _choose(
    cands: list[_Candidate], preference: Sequence[str], pins: Mapping[str, str]
) -> tuple[list[_Candidate], str]:
    """The candidates of the winning kind (provisional first) and why."""
    if pins:
        kept = [c for c in cands if _pin_matches(c.entities, pins)]
        if cands and not kept:
            return [], (
                f"no candidate has the entities {pins} of setting ingest.pin_entities.image; "
                f"found {', '.join(c.label() for c in cands)}"
            )
        cands = kept
    found = sorted({c.kind for c in cands}, key=lambda k: list(KINDS).index(k))
    usable = [c for c in cands if c.kind in preference]
    if not usable:
        what = ", ".join(c.label() for c in cands) if cands else "no SWI/GRE/MEGRE/T2starw image"
        return [], (
            f"no usable input: found {what}; accepted kinds in order (setting ingest.preference): "
            f"{' > '.join(preference)}"
        )
    best_kind = min(usable, key=lambda c: list(preference).index(c.kind)).kind
    same = sorted((c for c in usable if c.kind == best_kind), key=_Candidate.sort_key)
    chosen = same[0]
    reason = f"chosen {chosen.label()}"
    others = [k for k in found if k != best_kind and k in preference]
    if others:
        reason += (
            f" over {', '.join(others)} because {best_kind} comes first in the preference "
            f"order {' > '.join(preference)}"
        )
    if pins:
        reason += f"; pinned by ingest.pin_entities.image {pins}"
    if len(same) > 1:
        reason += (
            f"; provisional among {len(same)} {best_kind} candidates ("
            + ", ".join(c.label() for c in same[1:])
            + " also): ingestion keeps the one with the least ghosting, ties to the highest run, "
            "then no acq, then alphabetical entities (pin one with ingest.pin_entities.image)"
        )
    ignored = [k for k in found if k not in preference]
    if ignored:
        reason += f"; not in the preference order, ignored: {', '.join(ignored)}"
    if chosen.note:
        reason += f"; {chosen.note}"
    return same, reason


def _choose_t1w(
    t1w_here: list[_Volume], t1w_subject: list[_Volume], pins: Mapping[str, str]
) -> tuple[list[str], str]:
    for pool, where in ((t1w_here, "same session"), (t1w_subject, "subject level, no session")):
        if pins:
            pool = [v for v in pool if _pin_matches(v.group, pins)]
        if pool:
            cands = sorted(
                (_Candidate("t1w", (v.path,), None, v.group) for v in pool), key=_Candidate.sort_key
            )
            note = f"T1w {Path(cands[0].magnitude[0]).name} ({where}"
            if len(cands) > 1:
                note += (
                    f", provisional among {len(cands)}: ingestion keeps the one with the least ghosting, "
                    f"pin one with ingest.pin_entities.t1w"
                )
            note += f", pinned by ingest.pin_entities.t1w {pins})" if pins else ")"
            return [c.magnitude[0] for c in cands], note
    if pins and (t1w_here or t1w_subject):
        return [], f"no T1w has the entities {pins} of setting ingest.pin_entities.t1w"
    return [], "no T1w"


def _echo_times(files: Sequence[str], bids_dir, cache) -> tuple[float, ...] | None:
    times: list[float] = []
    for f in files:
        te = read_sidecar(f, bids_dir, cache).get("EchoTime")
        if isinstance(te, (int, float)):
            times.append(float(te))
        elif (
            isinstance(te, list)
            and len(files) == 1
            and all(isinstance(t, (int, float)) for t in te)
        ):
            times.extend(float(t) for t in te)
        else:
            return None
    return tuple(times)


def _labels(values, name: str) -> set[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    out = set()
    for v in values:
        if not isinstance(v, str):
            raise TypeError(
                f"{name} values must be strings (quote them in YAML, e.g. '02'), got {v!r}"
            )
        out.add(v.removeprefix("sub-"))
    return out


def _participants_tsv(root: Path) -> list[str]:
    path = root / "participants.tsv"
    if not path.is_file():
        _log.warning("%s: no participants.tsv; subjects are taken from the sub-* folders", root)
        return []
    try:
        ids = pd.read_csv(path, sep="\t", dtype=str)["participant_id"].dropna()
        return [i.removeprefix("sub-") for i in ids]
    except Exception as exc:  # noqa: BLE001 - a broken participants.tsv is not fatal
        _log.warning("%s: unreadable participants.tsv ignored (%s)", path, exc)
        return []


def plan_from_config(config: Mapping, db_dir: str | os.PathLike) -> list[InputRecord]:
    """:func:`plan_inputs` with the settings of a resolved workflow config (:func:`cmb.config.resolve`)."""
    ingest = config["ingest"]
    return plan_inputs(
        config["bids_dir"],
        db_dir,
        participant_label=config["participant_label"] or None,
        exclude_participant_label=config["exclude_participant_label"] or None,
        preference=ingest["preference"],
        pin_entities=ingest["pin_entities"],
        body_parts=ingest["body_parts"],
    )


def plan_inputs(
    bids_dir: str | os.PathLike,
    db_dir: str | os.PathLike,
    participant_label: str | Sequence[str] | None = None,
    exclude_participant_label: str | Sequence[str] | None = None,
    preference: Sequence[str] | None = None,
    pin_entities: Mapping[str, Mapping[str, str]] | None = None,
    body_parts: Sequence[str] | None = None,
) -> list[InputRecord]:
    """Choose one input per subject/session of a BIDS dataset.

    Parameters
    ----------
    bids_dir : path
        The raw BIDS dataset (read only).
    db_dir : path
        Folder for the persistent pybids index and header cache (outside ``bids_dir``).
    participant_label, exclude_participant_label : str or sequence of str, optional
        Labels with or without ``sub-``; strings only (``"02"`` is not ``"2"``).
    preference : sequence of str, optional
        Input kinds (:data:`KINDS`) in order of preference; kinds left out are
        never used. Default :data:`DEFAULT_PREFERENCE`.
    pin_entities : mapping, optional
        ``{"image": {entity: value}, "t1w": {entity: value}}``: only files with
        these entities (short or long names: ``acq`` or ``acquisition``) are used.
    body_parts : sequence of str, optional
        Accepted ``BodyPartExamined`` / ``bp-`` values; default :data:`DEFAULT_BODY_PARTS`.

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
        raise ValueError(
            f"unknown input kind(s) {unknown} in preference; choose from {list(KINDS)}"
        )
    pins = pin_entities or {}
    extra = set(pins) - {"image", "t1w"}
    if extra:
        raise ValueError(f"ingest.pin_entities has keys {sorted(extra)}; use image and t1w")
    image_pins = _normalize_pins(pins.get("image"), "ingest.pin_entities.image")
    t1w_pins = _normalize_pins(pins.get("t1w"), "ingest.pin_entities.t1w")
    body_parts = tuple(DEFAULT_BODY_PARTS if body_parts is None else body_parts)
    include = _labels(participant_label, "participant_label")
    exclude = _labels(exclude_participant_label, "exclude_participant_label") or set()
    root = Path(bids_dir).absolute()
    if not (root / "dataset_description.json").is_file():
        _log.warning("%s: no dataset_description.json (indexed anyway)", root)
    layout = index_bids(root, db_dir)
    headers = _HeaderCache(Path(db_dir).absolute())
    files: dict[str, dict[str | None, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path, ents in _indexed_files(layout).items():
        if path.endswith(_IMAGE_EXT) and "subject" in ents:
            files[ents["subject"]][ents.get("session")].append(path)
    subjects = set(files) | set(_participants_tsv(root))
    if include is not None:
        missing = sorted(include - subjects)
        if missing:
            raise ValueError(f"participant_label {missing} not found in {root}")
        subjects &= include
    subjects -= exclude
    records = []
    cache: dict = {}

    def roles(paths):
        vols, ignored = [], []
        for p in sorted(paths):
            suffix = parse_bids_name(os.path.basename(p))[1].lower()
            meta = read_sidecar(p, root, cache) if suffix in _SUFFIX else {}
            vol, why = _volume(p, meta, headers, body_parts)
            if vol is not None:
                vols.append(vol)
            elif why:
                ignored.append(why)
        return vols, ignored

    for sub in sorted(subjects):
        sessions = files.get(sub, {})
        if not sessions:
            records.append(
                InputRecord(
                    sub,
                    None,
                    None,
                    (),
                    None,
                    None,
                    None,
                    "listed in participants.tsv but no image files found",
                    str(root),
                )
            )
            continue
        by_session = {ses: roles(paths) for ses, paths in sessions.items()}
        t1w_subject = [v for v in by_session.get(None, ([], []))[0] if v.suffix == "T1w"]
        keys = [s for s in sessions if s is not None] or [None]
        if (
            None in sessions
            and keys != [None]
            and any(v.suffix != "T1w" for v in by_session[None][0])
        ):
            keys.append(None)
        for ses in sorted(keys, key=lambda s: (s is None, s or "")):
            vols, ignored_files = by_session.get(ses, ([], []))
            cands, t1w_here, left_out = _candidates(vols)
            ignored = tuple(ignored_files + left_out)
            same, reason = _choose(cands, preference, image_pins)
            t1ws, t1w_note = _choose_t1w(t1w_here, t1w_subject if ses is not None else [], t1w_pins)
            t1w = t1ws[0] if t1ws else None
            if ignored and not same:
                reason = (
                    f"no usable input: every SWI/GRE image was ruled out: {'; '.join(ignored)}"
                    if not cands
                    else f"{reason}; ignored: {'; '.join(ignored)}"
                )
            if not same:
                records.append(
                    InputRecord(
                        sub,
                        ses,
                        None,
                        (),
                        None,
                        t1w,
                        None,
                        f"{reason}; {t1w_note}",
                        str(root),
                        (),
                        tuple(t1ws) if len(t1ws) > 1 else (),
                        ignored,
                    )
                )
                continue
            alternatives = (
                tuple(
                    {
                        "magnitude": list(c.magnitude),
                        "phase": list(c.phase) if c.phase else None,
                        "echo_times": _echo_times(c.magnitude, root, cache),
                        "label": c.label(),
                    }
                    for c in same
                )
                if len(same) > 1
                else ()
            )
            chosen = same[0]
            records.append(
                InputRecord(
                    sub,
                    ses,
                    chosen.kind,
                    chosen.magnitude,
                    chosen.phase,
                    t1w,
                    _echo_times(chosen.magnitude, root, cache),
                    f"{reason}; {t1w_note}",
                    str(root),
                    alternatives,
                    tuple(t1ws) if len(t1ws) > 1 else (),
                    ignored,
                )
            )
    headers.save()
    return records


def format_plan(records: Sequence[InputRecord]) -> str:
    """A readable account of a plan: per subject/session the choice, the candidates and the ignored files."""
    lines = []
    for r in records:
        head = r.participant_id + (f" {r.session_id}" if r.session else "")
        if r.kind is None:
            lines.append(f"{head}: NO INPUT - {r.reason}")
        else:
            lines.append(f"{head}: {r.kind}")
            lines.append(f"  magnitude: {', '.join(Path(p).name for p in r.magnitude)}")
            if r.phase:
                lines.append(f"  phase:     {', '.join(Path(p).name for p in r.phase)}")
            lines.append(f"  T1w:       {Path(r.t1w).name if r.t1w else '-'}")
            for alt in r.alternatives[1:]:
                lines.append(f"  candidate: {alt['label']}")
            for t in r.t1w_alternatives[1:]:
                lines.append(f"  T1w candidate: {Path(t).name}")
            lines.append(f"  why: {r.reason}")
        for line in r.ignored:
            lines.append(f"  ignored: {line}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def _entity_pairs(text: str) -> dict[str, str]:
    pairs = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(
                f"{text!r}: give entities as key=value,key=value (e.g. task=still,acq=t2starPMCon)"
            )
        pairs[key.strip()] = value.strip()
    return pairs


def build_parser(p) -> None:
    """Arguments of ``cmb plan`` (a dry run of the workflow's input choice)."""
    p.add_argument("bids_dir", help="the BIDS dataset (only read)")
    p.add_argument(
        "--db-dir", help="folder for the pybids index (default: a temporary folder, removed after)"
    )
    p.add_argument("--participant-label", nargs="+")
    p.add_argument("--exclude-participant-label", nargs="+")
    p.add_argument("--preference", nargs="+", choices=list(KINDS), help="as ingest.preference")
    p.add_argument(
        "--pin-image",
        type=_entity_pairs,
        metavar="KEY=VALUE,...",
        help="as ingest.pin_entities.image, e.g. task=still,acq=t2starPMCon",
    )
    p.add_argument(
        "--pin-t1w", type=_entity_pairs, metavar="KEY=VALUE,...", help="as ingest.pin_entities.t1w"
    )
    p.add_argument(
        "--body-parts",
        nargs="+",
        help=f"as ingest.body_parts (default {' '.join(DEFAULT_BODY_PARTS)})",
    )
    p.add_argument("--json", dest="json_out", help="also write the records (JSON) here")
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args) -> int:
    """Print the plan: per subject/session what is chosen, what is ignored, and why."""
    pins = {k: v for k, v in (("image", args.pin_image), ("t1w", args.pin_t1w)) if v}
    tmp = None if args.db_dir else tempfile.mkdtemp(prefix="cmb-plan-")
    try:
        records = plan_inputs(
            args.bids_dir,
            args.db_dir or tmp,
            args.participant_label,
            args.exclude_participant_label,
            args.preference,
            pins,
            args.body_parts,
        )
    except (ValueError, TypeError, InputDataError) as exc:
        print(f"cmb plan: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(format_plan(records))
    if args.json_out:
        write_json(args.json_out, [r.to_dict() for r in records])
    n_none = sum(r.kind is None for r in records)
    print(
        f"\n{len(records)} subject/session(s), {len(records) - n_none} with an input, {n_none} without"
    )
    return 0
