"""Ingestion: check one subject/session's chosen input and write it in a uniform form.

:func:`cmb.ingest_plan.plan_inputs` chooses the files when the workflow builds its
DAG; :func:`ingest_subject` runs as one job per :class:`~cmb.ingest_plan.InputRecord`:

- where the plan left several candidates of the chosen kind (runs, ``acq``,
  ``rec``, ``task``...), it reads each and keeps the one with the least motion
  ghosting (:func:`cmb.image_checks.ghosting_index`), recording every figure and
  the reason in the report; a candidate within 10% of the provisional choice
  does not displace it, and an unreadable candidate is passed over with its reason;
- it checks every file (:mod:`cmb.image_checks`), combines echoes
  (:mod:`cmb.echo_combine`; a 4D file is split into its echoes), rescales the
  phase to radians (:mod:`cmb.phase_units`) and writes float32 NIfTI files with
  the original affine (not reoriented) plus a JSON report, all atomically.

The input dataset is only read.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from cmb import __version__
from cmb.atomic import save_nifti, write_json
from cmb.config import add_config_sections, default
from cmb.echo_combine import combine_echoes
from cmb.failures import InputDataError, ResourceError, run_stage
from cmb.image_checks import ghosting_index, load_image, voxel_sizes
from cmb.ingest_plan import KINDS, InputRecord, read_sidecar
from cmb.phase_units import phase_scaling

__all__ = ["choose_by_quality", "ingest_subject", "main", "sha256sum"]

_log = logging.getLogger(__name__)

#: A candidate must have a ghosting index this much lower (relative) to displace the provisional choice.
QUALITY_MARGIN = 0.10


def choose_by_quality(alternatives: Sequence[dict], **checks) -> tuple[int, list[dict], str]:
    """Index of the candidate with the least ghosting, the figures of each, and why.

    Parameters
    ----------
    alternatives : sequence of dict
        ``InputRecord.alternatives`` (each with ``magnitude`` and ``label``), the
        provisional choice first.
    **checks
        Limits for :func:`cmb.image_checks.load_image`.

    Raises
    ------
    cmb.failures.InputDataError
        No candidate can be read; the message names each file and its reason.
    """
    rows = []
    for i, alt in enumerate(alternatives):
        path = alt["magnitude"][0]
        try:
            img, _ = load_image(path, allow_4d=True, **checks)
            index = ghosting_index(np.asanyarray(img.dataobj), voxel_sizes(img.affine))
            rows.append(
                {"label": alt["label"], "path": path, "ghosting_index": index, "error": None}
            )
        except InputDataError as exc:
            rows.append(
                {"label": alt["label"], "path": path, "ghosting_index": None, "error": str(exc)}
            )
    readable = [i for i, r in enumerate(rows) if r["error"] is None]
    if not readable:
        raise InputDataError("; ".join(r["error"] for r in rows))
    scored = [i for i in readable if rows[i]["ghosting_index"] is not None]
    best = readable[0]
    why = f"kept {rows[best]['label']}"
    if scored:
        lowest = min(scored, key=lambda i: rows[i]["ghosting_index"])
        base = rows[best]["ghosting_index"]
        if best not in scored or rows[lowest]["ghosting_index"] < (1 - QUALITY_MARGIN) * base:
            best = lowest
        figures = ", ".join(
            f"{Path(rows[i]['path']).name} {rows[i]['ghosting_index']:.4f}" for i in scored
        )
        why = (
            f"chose {rows[best]['label']} by image quality among {len(alternatives)} candidates "
            f"(ghosting index, lower is better: {figures}"
            + ("; the provisional choice is kept within 10%" if best == readable[0] else "")
            + ")"
        )
    else:
        why += " (ghosting not measurable on a tight field of view; the provisional order decides)"
    failed = [r for r in rows if r["error"]]
    if failed:
        why += "; passed over: " + "; ".join(r["error"] for r in failed)
    for i, r in enumerate(rows):
        r["chosen"] = i == best
    return best, rows, why


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
    phase_units: str = default("ingest", "phase_units"),
    echo_method: str = default("ingest", "echo_method"),
    min_fov_mm: float | None = default("ingest", "min_fov_mm"),
    max_voxel_mm: float = default("ingest", "max_voxel_mm"),
    max_nonfinite_fraction: float = default("ingest", "max_nonfinite_fraction"),
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
    rec = record if isinstance(record, InputRecord) else InputRecord.from_dict(record)
    where = Path(rec.bids_dir or ".") / rec.participant_id / (rec.session_id or "")
    if rec.kind is None or not rec.magnitude:
        raise InputDataError(f"{where}: missing modality: {rec.reason}")
    if out_phase is not None and not rec.has_phase:
        raise InputDataError(
            f"{where}: phase output requested but {rec.magnitude[0]} has no phase image"
        )
    if out_t1w is not None and not rec.has_t1w:
        raise InputDataError(f"{where}: T1w output requested but no T1w image was found")
    checks = {
        "min_fov_mm": min_fov_mm,
        "max_voxel_mm": max_voxel_mm,
        "max_nonfinite_fraction": max_nonfinite_fraction,
    }
    quality = None
    if len(rec.alternatives) > 1:
        best, quality, why = choose_by_quality(rec.alternatives, **checks)
        alt = rec.alternatives[best]
        rec = dataclasses.replace(
            rec,
            magnitude=tuple(alt["magnitude"]),
            phase=tuple(alt["phase"]) if alt.get("phase") else None,
            echo_times=tuple(alt["echo_times"]) if alt.get("echo_times") else None,
            reason=f"{rec.reason}; {why}",
        )
    _log.info("%s %s: %s", rec.participant_id, rec.session_id or "", rec.reason)

    combo = combine_echoes(
        list(rec.magnitude),
        list(rec.phase) if out_phase is not None else None,
        echo_times=rec.echo_times,
        phase_echo=phase_echo,
        method=echo_method,
        allow_4d=rec.kind == "megre",
        grid_atol_mm=grid_atol_mm,
        **checks,
    )
    fixes = list(combo.messages)
    units = None
    if combo.phase is not None:
        # detect on all echoes together: they share one encoding, and a short first
        # echo alone may not fill its range
        scaling = phase_scaling(
            combo.phase_all_echoes,
            phase_units,
            rec.phase[0],
            metadata=read_sidecar(rec.phase[0], rec.bids_dir or None),
        )
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
        "candidates_quality": quality,
        "inputs": {
            "magnitude": [{"path": p, "sha256": sha256sum(p)} for p in rec.magnitude],
            "phase": (
                [{"path": p, "sha256": sha256sum(p)} for p in rec.phase]
                if combo.phase is not None
                else None
            ),
            "t1w": {"path": rec.t1w, "sha256": sha256sum(rec.t1w)} if t1w_img is not None else None,
        },
        "outputs": {
            "magnitude": str(out_mag),
            "phase": None if out_phase is None else str(out_phase),
            "t1w": None if out_t1w is None else str(out_t1w),
        },
        "echo_times": list(rec.echo_times) if rec.echo_times else None,
        "n_echoes": combo.n_echoes,
        "echo_combination": echo_method if rec.kind == "megre" else None,
        "phase_echo": combo.phase_echo,
        "phase_units": units,
        "fixes": fixes,
        "metadata": {
            k: meta.get(k)
            for k in (
                "EchoTime",
                "MagneticFieldStrength",
                "Manufacturer",
                "ManufacturersModelName",
                "RepetitionTime",
                "FlipAngle",
            )
            if k in meta
        },
        "shape": list(combo.magnitude.shape),
        "voxel_size_mm": [round(float(v), 6) for v in voxel_sizes(combo.magnitude.affine)],
        "cmb_version": __version__,
    }
    if out_json is not None:
        write_json(out_json, report)
    return report


def _replace_data(img, data):
    out = nib.Nifti1Image(np.asarray(data, dtype=np.float32), img.affine, img.header.copy())
    out.header.set_data_dtype(np.float32)
    out.header.set_slope_inter(1.0, 0.0)
    return out


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cmb.ingest", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="ingest one subject/session")
    run.add_argument("--subject", required=True, help="label, e.g. 02")
    run.add_argument("--session")
    run.add_argument(
        "--kind",
        required=True,
        choices=[*KINDS, "none"],
        help="input kind; 'none' records a subject without usable input (fails)",
    )
    run.add_argument("--mag", nargs="+", default=[], help="magnitude file(s), echoes in order")
    run.add_argument("--phase", nargs="+", help="phase file(s), echoes in order")
    run.add_argument("--t1w")
    run.add_argument("--echo-times", nargs="+", type=float, help="seconds, one per echo")
    run.add_argument("--reason", default="", help="why this input was chosen (for the report)")
    run.add_argument(
        "--alternatives",
        type=json.loads,
        default=(),
        help="JSON list of the plan's candidates of this kind (InputRecord.alternatives); "
        "the one with the least ghosting is ingested",
    )
    run.add_argument("--bids-dir", default="", help="dataset root, for sidecar inheritance")
    run.add_argument("--out-mag", required=True)
    run.add_argument("--out-phase")
    run.add_argument("--out-t1w")
    run.add_argument("--out-json", required=True)
    run.add_argument("--phase-echo", type=int)
    run.add_argument("--phase-units")
    run.add_argument("--echo-method", choices=["rms", "mean"])
    run.add_argument("--min-fov-mm", type=float, help="0 disables the check")
    run.add_argument("--max-voxel-mm", type=float)
    run.add_argument("--max-nonfinite-fraction", type=float)
    run.add_argument(
        "--failure-record",
        help="soft failure: write a status record here, placeholders on error, exit 0",
    )
    run.add_argument("--log", help="log file path recorded in the failure record")
    add_config_sections(run, "ingest")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see ``python -m cmb.ingest --help``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    kind = None if args.kind == "none" else args.kind
    record = InputRecord(
        args.subject,
        args.session,
        kind,
        tuple(args.mag),
        tuple(args.phase) if args.phase else None,
        args.t1w,
        tuple(args.echo_times) if args.echo_times else None,
        args.reason or "given on the command line",
        args.bids_dir,
        tuple(args.alternatives),
    )

    def work():
        ingest_subject(
            record,
            args.out_mag,
            args.out_phase,
            args.out_t1w,
            args.out_json,
            phase_echo=args.phase_echo,
            phase_units=args.phase_units,
            echo_method=args.echo_method,
            min_fov_mm=args.min_fov_mm or None,
            max_voxel_mm=args.max_voxel_mm,
            max_nonfinite_fraction=args.max_nonfinite_fraction,
        )

    if args.failure_record is None:
        try:
            work()
        except InputDataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    outputs = [o for o in (args.out_mag, args.out_phase, args.out_t1w, args.out_json) if o]
    try:
        rec = run_stage(
            "ingest", args.subject, args.session, outputs, args.failure_record, args.log, work
        )
    except ResourceError as exc:  # disk full etc.: a hard failure, so that a rerun redoes it
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if rec["status"] != "ok":
        print(f"ingest {rec['status']}: {rec['message']}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
