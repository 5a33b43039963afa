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

from cmb.evaluation import _acquisition, _scan_key

__all__ = ["Scan", "truth_files", "paired_scans", "derivative_table"]

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
    """Ground-truth file of each scan key under ``truth_dir`` (label image preferred over a point table)."""
    found: dict[str, Path] = {}
    for path in sorted(Path(truth_dir).rglob("*_label-CMB_dseg.*")):
        if not re.search(r"\.(nii|nii\.gz|tsv)$", path.name):
            continue
        key = _scan_key(path.name)
        if key in found and not path.name.endswith(".tsv"):
            found[key] = path
        found.setdefault(key, path)
    return found


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
        key = _scan_key(source)
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
        scans.append(Scan(key, _acquisition(truths[key]), image, mask, phase, truths[key]))
    return scans


def derivative_table(scan: Scan, suffix: str = "desc-candidates_cmb.tsv") -> Path:
    """A per-scan table written next to the scan's preprocessed image, e.g. the detect stage's candidates."""
    stem = scan.image.name.split("_desc-preproc")[0].replace("_part-mag", "")
    return scan.image.parent / f"{stem}_{suffix}"
