"""Compare two cmb output folders (a local run and a SLURM run of the same cohort).

    python .ci/compare_outputs.py LOCAL_OUT SLURM_OUT

Compared: the set of files (logs/ and benchmarks/ left out), every CSV/TSV as text,
every NIfTI's data array and affine, ANTs .mat transforms byte for byte; all must be
equal. Both runs use the workflow's `reproducible: true`, which runs ANTs and CPU
detection on one thread each (docs/robustness.md, "Determinism"). Other files (JSON
reports and status records with timings and host names, SVG figures with dates) must
exist on both sides but are not compared. Exit 1 on any difference, with one line per
difference (a table's first differing line included).
"""

from __future__ import annotations

import sys
from pathlib import Path

SKIP_DIRS = {"logs", "benchmarks"}


def files(root: Path) -> set[str]:
    out = set()
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and rel.parts[0] not in SKIP_DIRS:
            out.add(rel.as_posix())
    return out


def first_difference(a_lines: list[str], b_lines: list[str]) -> str:
    """Where two tables first differ, clipped for a log line.

    >>> first_difference(["h", "1 0.5"], ["h", "1 0.6"])
    "line 2: '1 0.5' vs '1 0.6'"
    >>> first_difference(["h"], ["h", "x"])
    'line counts 1 vs 2'
    """
    for n, (a, b) in enumerate(zip(a_lines, b_lines), start=1):
        if a != b:
            return f"line {n}: {a[:300]!r} vs {b[:300]!r}"
    return f"line counts {len(a_lines)} vs {len(b_lines)}"


def compare(a_root: Path, b_root: Path) -> tuple[list[str], dict[str, int]]:
    import nibabel as nib
    import numpy as np

    problems: list[str] = []
    counts = {"table": 0, "nifti": 0, "binary": 0, "present": 0}
    a_files, b_files = files(a_root), files(b_root)
    for rel in sorted(a_files - b_files):
        problems.append(f"only in {a_root}: {rel}")
    for rel in sorted(b_files - a_files):
        problems.append(f"only in {b_root}: {rel}")
    for rel in sorted(a_files & b_files):
        a, b = a_root / rel, b_root / rel
        if rel.endswith((".csv", ".tsv")):
            counts["table"] += 1
            a_lines = a.read_text(encoding="utf-8").splitlines()
            b_lines = b.read_text(encoding="utf-8").splitlines()
            if a_lines != b_lines:
                problems.append(f"table differs: {rel} ({first_difference(a_lines, b_lines)})")
        elif rel.endswith((".nii", ".nii.gz")):
            counts["nifti"] += 1
            ia, ib = nib.load(a), nib.load(b)
            da, db = np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj)
            if da.shape != db.shape or da.dtype != db.dtype:
                problems.append(
                    f"NIfTI shape/dtype differs: {rel} {da.shape}/{da.dtype} vs {db.shape}/{db.dtype}"
                )
            elif np.array_equal(da, db, equal_nan=np.issubdtype(da.dtype, np.floating)):
                pass
            else:
                diff = np.abs(da.astype(np.float64) - db.astype(np.float64))
                problems.append(
                    f"NIfTI data differs: {rel} (max |diff| {np.nanmax(diff):.3g}, "
                    f"{int(np.count_nonzero(diff))} voxels)"
                )
            if not np.allclose(ia.affine, ib.affine, rtol=0, atol=1e-6):
                problems.append(f"NIfTI affine differs: {rel}")
        elif rel.endswith(".mat"):
            counts["binary"] += 1
            if a.read_bytes() != b.read_bytes():
                problems.append(f"transform differs: {rel}")
        else:
            counts["present"] += 1
    return problems, counts


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    a_root, b_root = Path(argv[0]), Path(argv[1])
    problems, counts = compare(a_root, b_root)
    print(
        f"compared {counts['table']} CSV/TSV tables, {counts['nifti']} NIfTI images, "
        f"{counts['binary']} transforms; {counts['present']} other files checked for presence"
    )
    for line in problems:
        print(f"  DIFF {line}")
    if not counts["table"] or not counts["nifti"]:
        print("  no tables or no images to compare: the runs produced nothing")
        return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
