"""Annotated scans: the workflow's preprocessed outputs paired with ground truth.

Ground truth lives in a derivatives folder, one file per scan:

- ``*_label-CMB_dseg.nii.gz`` label maps (one value per CMB, as in the VALDO
  challenge and the synthetic generator's ``cmb-truth``), optionally with a
  sibling ``.tsv`` (``index`` and any columns, e.g. ``mars_region``); a binary
  mask also works (one CMB per connected component);
- or ``*_label-CMB_dseg.tsv`` point tables (``x_mm, y_mm, z_mm`` scanner RAS, optional
  ``radius_mm``).

A scan is identified by the ``sub``/``ses``/``run`` entities of the raw input that
the ingest stage chose (named in its JSON report), so a dataset with rescans pairs
each subject with the truth of the run that was processed.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from cmb.verdicts import is_verdict_file

__all__ = [
    "Scan",
    "scan_key",
    "acquisition_label",
    "is_nifti",
    "truth_files",
    "paired_scans",
    "derivative_table",
    "find_scans",
    "derivative_scans",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scan:
    """One preprocessed scan with its ground truth."""

    key: str  # sub-X[_ses-Y][_run-N] of the raw input
    acquisition: str
    image: Path
    mask: Path
    phase: Path | None
    truth: Path

    @property
    def subject(self) -> str:
        return self.key.split("_")[0]


def truth_files(truth_dir) -> dict[str, Path]:
    """Ground-truth file of each scan key under ``truth_dir``.

    ``*_label-CMB_dseg.nii.gz`` (or ``.nii``; with their sibling ``.tsv``), or only
    ``*_label-CMB_dseg.tsv`` (point annotations) when there is no image; reviewers'
    verdict files of one scan count once (:func:`cmb.evaluation.load_truth` reads them
    together). Two images, or two tables, for one scan are an error naming both.
    """
    truth: dict[str, Path] = {}
    for path in sorted(Path(truth_dir).rglob("*_label-CMB_dseg.*")):
        if not (is_nifti(path) or path.name.endswith(".tsv")):
            continue
        key = scan_key(path.name)
        if key in truth and is_nifti(truth[key]) and not is_nifti(path):
            continue  # the image (with its table) wins over the table alone
        if key in truth and _same_scan_verdicts(truth[key], path):
            continue
        if key in truth and is_nifti(truth[key]) == is_nifti(path):
            raise ValueError(f"two ground truths for {key}: {truth[key]} and {path}")
        truth[key] = path
    return truth


def paired_scans(derivatives_dir, truth_dir) -> list[Scan]:
    """Preprocessed scans of a workflow output folder paired with their ground truth.

    Scans whose preprocessing failed (placeholders) or that have no ground truth
    are left out, with a warning.
    """
    truths = truth_files(truth_dir)
    scans = []
    for report in sorted(Path(derivatives_dir).rglob("*_desc-ingested_swi.json")):
        if report.stat().st_size == 0:
            continue
        rep = json.loads(report.read_text())
        source = Path(rep["inputs"]["magnitude"][0]["path"]).name
        key = scan_key(source)
        stem = report.name[: -len("_desc-ingested_swi.json")]
        folder = report.parent
        image = folder / f"{stem}_desc-preproc_swi.nii.gz"
        mask = folder / f"{stem}_desc-brain_mask.nii.gz"
        phase = folder / f"{stem.replace('_part-mag', '_part-phase')}_desc-preproc_swi.nii.gz"
        phase = phase if "_part-mag" in stem else None
        needed = [image, mask] + ([phase] if phase else [])
        if not all(p.exists() and p.stat().st_size > 0 for p in needed):
            _log.warning("%s: preprocessed files missing or failed, left out", key)
            continue
        if key not in truths:
            _log.warning("%s: no ground truth under %s, left out", key, truth_dir)
            continue
        scans.append(Scan(key, acquisition_label(truths[key]), image, mask, phase, truths[key]))
    return scans


def derivative_table(scan: Scan, suffix: str = "desc-candidates_cmb.tsv") -> Path:
    """A per-scan table written next to the scan's preprocessed image, e.g. the detect stage's candidates."""
    stem = scan.image.name.split("_desc-preproc")[0].replace("_part-mag", "")
    return scan.image.parent / f"{stem}_{suffix}"


def is_nifti(path: Path) -> bool:
    return path.name.endswith((".nii", ".nii.gz"))


_KEY_ENTITIES = ("sub", "ses", "run")


def scan_key(name: str) -> str:
    """``sub-X[_ses-Y][_run-N]`` from a BIDS file name (run index compared as an integer)."""
    ents = dict(re.findall(r"(?:^|_)([a-zA-Z]+)-([a-zA-Z0-9]+)(?=_|\.)", name))
    if "sub" not in ents:
        raise ValueError(f"{name}: no sub- entity")
    if "run" in ents and ents["run"].isdigit():
        ents["run"] = str(int(ents["run"]))
    return "_".join(f"{k}-{ents[k]}" for k in _KEY_ENTITIES if k in ents)


def acquisition_label(truth_path: Path) -> str:
    """Acquisition label: the synthetic ``preset``, else the ``acq-`` entity, else ``unknown``."""
    prefix = re.sub(r"_label-CMB_dseg\.(nii\.gz|nii|tsv)$", "", truth_path.name)
    params = truth_path.with_name(f"{prefix}_synth.json")
    if params.exists():
        try:
            return str(json.loads(params.read_text())["preset"])
        except (ValueError, KeyError):
            pass
    acq = re.search(r"(?:^|_)acq-([a-zA-Z0-9]+)", truth_path.name)
    return acq.group(1) if acq else "unknown"


def find_scans(
    detections_dir, truth_dir, pattern: str = "*detections.tsv"
) -> tuple[list, list[str]]:
    """Pair detection tables with ground truth by their ``sub``/``ses``/``run`` entities.

    Truth files as :func:`truth_files` finds them; detection files match ``pattern``
    under ``detections_dir``.

    Returns
    -------
    scans : list of (subject, acquisition, detections path or None, truth path)
        Sorted by subject key; None where no detection file was found.
    unmatched : list of str
        Detection files with no ground truth.
    """
    truth = truth_files(truth_dir)
    dets = {}
    for path in sorted(Path(detections_dir).rglob(pattern)):
        key = scan_key(path.name)
        if key in dets:
            raise ValueError(f"two detection files for {key}: {dets[key]} and {path}")
        dets[key] = path
    scans = [
        (key, acquisition_label(path), dets.get(key), path) for key, path in sorted(truth.items())
    ]
    return scans, [str(dets[k]) for k in sorted(set(dets) - set(truth))]


def _same_scan_verdicts(a: Path, b: Path) -> bool:
    return a.parent == b.parent and is_verdict_file(a) and is_verdict_file(b)


def derivative_scans(derivatives_dir, truth_dir, table_suffix: str) -> tuple[list, list[str]]:
    """As :func:`find_scans`, for the per-scan tables of a cmb workflow output folder."""
    scans = []
    for scan in paired_scans(derivatives_dir, truth_dir):
        table = derivative_table(scan, table_suffix)
        scans.append((scan.key, scan.acquisition, table if table.exists() else None, scan.truth))
    return scans, []
