"""Soft failures: one broken subject never stops a cohort.

How it works
------------
Every workflow stage runs inside :func:`run_stage` (the rules call
``python -m cmb.failures run STAGE --subject ... -- cmb.<stage> ARGS...``, which runs the
stage's module in the same process: :func:`run_module_stage`). The stage writes a small
*status record* (JSON) at ``failure_path`` whatever happens:

- on success: ``{"status": "ok", ...}``;
- on any exception (:class:`Exception`, not ``KeyboardInterrupt``): ``"failed"``,
  with the error class and a one-line message; the traceback goes to the
  Python log (the rule's ``log:`` file); every declared output is replaced by
  an empty placeholder file so that Snakemake's DAG continues, and the call
  returns normally (the CLI then exits 0);
- when an upstream stage's record says ``failed`` or ``skipped``: the stage is
  not run at all, its record says ``"skipped"`` with the message
  ``"skipped: upstream stage X failed: reason"``, and placeholders are written.

Faults of the machine rather than of the subject's data are *not* soft
failures: a full disk or quota (``ENOSPC``, ``EDQUOT``), a read-only output
filesystem (``EROFS``) and ``MemoryError`` raise :class:`ResourceError` instead
(no record, no placeholders), so the job fails, Snakemake removes its outputs
and a rerun after the fix computes it again. Recording them as the subject's
failure would leave placeholder outputs that look complete and are never
recomputed.

Records are written atomically (:func:`cmb.atomic.write_json`), so a record is
either complete or absent. At the end, :func:`collect_failures` gathers every
record that is not ``ok`` into the cohort ``failures.csv`` (one row per failed or
skipped stage, columns :data:`FAILURE_COLUMNS`).

Empty placeholders are never valid NIfTI or JSON files, so nothing downstream can
mistake them for results; downstream stages should pass their upstream records
to :func:`run_stage` rather than reading placeholders.

Participant and session ids are stored in BIDS form (``sub-01``, ``ses-1``); bare
labels are prefixed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import errno
import json
import logging
import os
import runpy
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cmb.atomic import atomic_path, write_json

__all__ = [
    "FAILURE_COLUMNS",
    "InputDataError",
    "ResourceError",
    "collect_failures",
    "one_line",
    "read_record",
    "run_module_stage",
    "run_stage",
    "upstream_failure",
    "write_failures_csv",
]

_log = logging.getLogger(__name__)

#: Columns of the cohort failures table, in order.
FAILURE_COLUMNS = ["participant_id", "session_id", "stage", "error_class", "message", "log"]

_MAX_MESSAGE = 500


class InputDataError(ValueError):
    """An input file is missing, unreadable or unusable.

    The message is one line and starts with the offending file's path.

    >>> str(InputDataError("/data/sub-01_swi.nii.gz: all voxels are zero"))
    '/data/sub-01_swi.nii.gz: all voxels are zero'
    """


class ResourceError(RuntimeError):
    """The machine, not the subject's data, failed (disk full, read-only output, out of memory).

    Raised by :func:`run_stage` so that the job fails hard and is recomputed by a rerun.
    """


_RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
# the same errors as text (an exception rebuilt from a message, a subprocess's last line)
_RESOURCE_TEXT = (
    "[Errno 28]",
    "No space left on device",
    "[Errno 122]",
    "Disk quota exceeded",
    "[Errno 30]",
    "Read-only file system",
    "MemoryError",
)


def is_resource_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a machine fault.

    >>> is_resource_error(OSError(28, "No space left on device"))
    True
    >>> is_resource_error(InputDataError("sub-01_swi.nii.gz: all voxels are zero"))
    False
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or (
            isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS
        ):
            return True
        if not isinstance(exc, InputDataError) and any(
            t in str(exc) or t == type(exc).__name__ for t in _RESOURCE_TEXT
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    """Collapse ``text`` to one line of at most ``limit`` characters.

    >>> one_line("first\\n  second  line ")
    'first | second  line'
    """
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    flat = " | ".join(parts)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _bids_id(value: str | None, prefix: str) -> str | None:
    if value is None or value == "":
        return None
    value = str(value)
    return value if value.startswith(prefix) else prefix + value


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """Read a status record; ``None`` if the file is missing, empty or not a record.

    An empty file is what :func:`run_stage` leaves as a placeholder output, so it
    reads as "no record".
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        return None
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "status" in record else None


def upstream_failure(records: Iterable[str | os.PathLike | dict | None]) -> dict[str, Any] | None:
    """The first upstream record (path or dict) whose status is not ``ok``, else ``None``.

    Missing record files count as "no failure" (the stage may simply not use the
    soft-failure mechanism).

    >>> upstream_failure([{"status": "ok"}, {"status": "failed", "stage": "ingest"}])["stage"]
    'ingest'
    >>> upstream_failure([]) is None
    True
    """
    for rec in records:
        if rec is None:
            continue
        if not isinstance(rec, dict):
            rec = read_record(rec)
        if rec is not None and rec.get("status") not in (None, "ok"):
            return rec
    return None


def _write_placeholders(outputs: Sequence[str | os.PathLike]) -> None:
    for out in outputs:
        out = Path(out)
        if out.is_dir():
            continue
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"")


def run_stage(
    stage: str,
    participant_id: str,
    session_id: str | None,
    outputs: Sequence[str | os.PathLike],
    failure_path: str | os.PathLike,
    log: str | os.PathLike | None,
    func: Callable[[], Any],
    *,
    upstream: Iterable[str | os.PathLike | dict | None] = (),
) -> dict[str, Any]:
    """Run one stage of one subject/session; never raise on a subject's failure.

    Parameters
    ----------
    stage : str
        Stage name, e.g. ``"ingest"``.
    participant_id, session_id : str or None
        ``"01"`` or ``"sub-01"``; ``"1"``, ``"ses-1"`` or ``None``.
    outputs : sequence of path
        Files the stage declares to Snakemake; on failure or skip each is
        replaced by an empty placeholder.
    failure_path : path
        Where the status record (JSON) is written, always.
    log : path or None
        The stage's log file, recorded in the record (not written here).
    func : callable
        Called without arguments to do the work.
    upstream : iterable of path or dict, optional
        Status records of the stages this one depends on. If any is ``failed``
        or ``skipped``, ``func`` is not called.

    Returns
    -------
    dict
        The record written to ``failure_path``; ``record["status"]`` is
        ``"ok"``, ``"failed"`` or ``"skipped"``.

    Raises
    ------
    ResourceError
        ``func`` failed because of the machine (see :func:`is_resource_error`):
        nothing is recorded, so the job fails and a rerun computes it again.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> def broken():
    ...     raise InputDataError("sub-01_swi.nii.gz: all voxels are zero")
    >>> rec = run_stage("ingest", "01", None, [d / "out.nii.gz"], d / "ingest.json",
    ...                 d / "ingest.log", broken)
    >>> rec["status"], rec["error_class"], (d / "out.nii.gz").stat().st_size
    ('failed', 'InputDataError', 0)
    >>> run_stage("preprocess", "01", None, [], d / "pre.json", None, print,
    ...           upstream=[d / "ingest.json"])["message"]
    'skipped: upstream stage ingest failed: sub-01_swi.nii.gz: all voxels are zero'
    """
    base = {
        "participant_id": _bids_id(participant_id, "sub-"),
        "session_id": _bids_id(session_id, "ses-"),
        "stage": stage,
        "log": None if log is None else str(log),
    }
    failed = upstream_failure(upstream)
    if failed is not None:
        reason = failed.get("message", "")
        if failed.get("status") == "failed":
            reason = f"{failed.get('stage', '?')} failed: {reason}"
            message = f"skipped: upstream stage {reason}"
        else:  # the upstream stage was itself skipped: keep the root cause
            message = reason if reason.startswith("skipped:") else f"skipped: {reason}"
        record = {
            **base,
            "status": "skipped",
            "error_class": "UpstreamFailure",
            "message": one_line(message),
            "upstream_stage": failed.get("stage"),
            "time": _now(),
        }
        _log.warning(
            "%s %s %s: %s", stage, base["participant_id"], base["session_id"] or "", message
        )
        _write_placeholders(outputs)
        write_json(failure_path, record)
        return record
    try:
        func()
    except Exception as exc:  # noqa: BLE001 - the point is to catch everything
        if is_resource_error(exc):
            message = one_line(f"{type(exc).__name__}: {exc}")
            _log.error(
                "stage %s for %s %s stopped by a machine fault, not by the subject's data "
                "(no failure recorded; fix it and rerun): %s",
                stage,
                base["participant_id"],
                base["session_id"] or "",
                message,
            )
            raise ResourceError(f"{stage} {base['participant_id']}: {message}") from exc
        _log.error(
            "stage %s failed for %s %s",
            stage,
            base["participant_id"],
            base["session_id"] or "",
            exc_info=True,
        )
        record = {
            **base,
            "status": "failed",
            "error_class": type(exc).__name__,
            "message": one_line(str(exc) or type(exc).__name__),
            "time": _now(),
        }
        _write_placeholders(outputs)
        write_json(failure_path, record)
        return record
    record = {**base, "status": "ok", "error_class": None, "message": None, "time": _now()}
    write_json(failure_path, record)
    return record


def collect_failures(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """The cohort failures table: one row per record that is not ``ok``.

    Missing, empty or unreadable record files are ignored. Rows are sorted by
    participant, session and stage so the table is deterministic.

    Parameters
    ----------
    paths : iterable of path
        Status records written by :func:`run_stage`.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`FAILURE_COLUMNS`; empty (with those columns) if nothing failed.
    """
    rows = []
    for path in paths:
        rec = read_record(path)
        if rec is None or rec.get("status") == "ok":
            continue
        rows.append({c: rec.get(c) for c in FAILURE_COLUMNS})
    table = pd.DataFrame(rows, columns=FAILURE_COLUMNS)
    if len(table):
        key = table[["participant_id", "session_id", "stage"]].fillna("")
        order = key.sort_values(list(key.columns), kind="stable").index
        table = table.loc[order].reset_index(drop=True)
    return table


def write_failures_csv(paths: Iterable[str | os.PathLike], out: str | os.PathLike) -> pd.DataFrame:
    """Write :func:`collect_failures` of ``paths`` to the CSV ``out`` atomically."""
    table = collect_failures(paths)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")
    return table


class _LastLine:
    """A text stream that passes everything to ``stream`` and keeps the last non-empty line."""

    def __init__(self, stream):
        self.stream, self.last, self._partial = stream, "", ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                self.last = line.strip()
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def run_module_stage(
    stage: str,
    participant_id: str,
    session_id: str | None,
    outputs: Sequence[str],
    failure_path: str,
    log: str | None,
    module: str,
    argv: Sequence[str],
    *,
    upstream: Iterable[str] = (),
) -> dict[str, Any]:
    """:func:`run_stage` of ``python -m module argv...``, run in this process.

    The stage's own exception is what the record names (its class and message). A stage
    that exits with a non-zero status instead is recorded with the last line it printed
    to stderr (argparse's usage error, for one).
    """

    def work():
        saved_argv, saved_stderr = sys.argv, sys.stderr
        sys.argv = [module, *argv]
        sys.stderr = tee = _LastLine(saved_stderr)
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as done:
            if done.code not in (None, 0):
                text = done.code if isinstance(done.code, str) else tee.last
                raise RuntimeError(
                    text or f"python -m {module} exited with status {done.code}"
                ) from None
        finally:
            sys.argv, sys.stderr = saved_argv, saved_stderr

    return run_stage(
        stage, participant_id, session_id, outputs, failure_path, log, work, upstream=upstream
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cmb.failures collect OUT.csv RECORD...`` or ``... run STAGE ... -- MODULE ARGS...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m cmb.failures", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    collect = sub.add_parser("collect", help="collect stage status records into failures.csv")
    collect.add_argument("out", help="failures CSV to write")
    collect.add_argument("records", nargs="*", help="status records (JSON) written by run_stage")
    run = sub.add_parser(
        "run",
        help="run one subject's stage (python -m MODULE ARGS... after --) as a soft "
        "failure: a status record always, placeholders when it fails",
    )
    run.add_argument("stage")
    run.add_argument("--subject", required=True)
    run.add_argument("--session")
    run.add_argument("--record", required=True, help="status record to write")
    run.add_argument("--log", help="the stage's log file (named in the record)")
    run.add_argument(
        "--outputs", nargs="*", default=[], help="the stage's outputs (placeholders on failure)"
    )
    run.add_argument(
        "--upstream", nargs="*", default=[], help="status records of the stages it depends on"
    )
    command = []
    if "--" in argv:
        argv, command = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    args = parser.parse_args(argv)
    if args.command == "collect":
        table = write_failures_csv(args.records, args.out)
        print(f"{len(table)} failed or skipped stage(s) -> {args.out}")
        return 0
    if not command:
        parser.error(
            "run: the stage's module and arguments follow --, e.g. -- cmb.detect --image ..."
        )
    try:
        run_module_stage(
            args.stage,
            args.subject,
            args.session,
            args.outputs,
            args.record,
            args.log,
            command[0],
            command[1:],
            upstream=args.upstream,
        )
    except ResourceError as e:  # disk full etc.: the job fails, so that a rerun redoes it
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
