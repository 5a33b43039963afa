"""Time DAG construction (``snakemake -n``) on a large BIDS layout of empty files.

Builds a BIDS dataset of N subjects (default 2,000) in a temporary folder, every
NIfTI an empty file (planning reads only names and JSON sidecars), and times a dry
run of the workflow twice: the first run builds the persistent pybids index, the
second reuses it, and a third run with --quiet shows how much of that is printing the
job list. Target: <= 60 s for 2,000 subjects.

    python bench/bench_dag.py [--subjects 2000] [--layout gre|megre|swi] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_layout(root: Path, n: int, layout: str) -> int:
    """Write an n-subject BIDS tree of empty files; return the number of NIfTI files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"})
    )
    rows = ["participant_id"]
    count = 0
    if layout == "megre":
        for e, te in ((1, 0.005), (2, 0.015), (3, 0.025)):
            for part in ("mag", "phase"):
                (root / f"echo-{e}_part-{part}_MEGRE.json").write_text(json.dumps({"EchoTime": te}))
    for i in range(1, n + 1):
        sub = f"sub-{i:04d}"
        rows.append(sub)
        anat = root / sub / "anat"
        anat.mkdir(parents=True)
        names = [anat / f"{sub}_T1w.nii.gz"]
        if layout == "gre":
            swi = root / sub / "swi"
            swi.mkdir()
            names += [swi / f"{sub}_part-mag_GRE.nii.gz", swi / f"{sub}_part-phase_GRE.nii.gz"]
            for p in names[1:]:
                Path(str(p).replace(".nii.gz", ".json")).write_text('{"EchoTime": 0.02}')
        elif layout == "megre":
            names += [
                anat / f"{sub}_echo-{e}_part-{part}_MEGRE.nii.gz"
                for e in (1, 2, 3)
                for part in ("mag", "phase")
            ]
        else:
            names += [anat / f"{sub}_swi.nii.gz"]
        for p in names:
            p.touch()
        count += len(names)
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return count


def dry_run(bids: Path, out: Path, work: Path, *extra: str) -> tuple[float, int, str]:
    """Seconds for one ``snakemake -n``, the number of jobs, and the job table."""
    env = dict(
        os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        *extra,
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(work),
        "--config",
        f"bids_dir={bids}",
        f"output_dir={out}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"snakemake -n failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    text = proc.stdout + proc.stderr
    m = re.search(r"^total\s+(\d+)", text, re.MULTILINE)
    table = text[text.find("Job stats:") :] if "Job stats:" in text else ""
    return seconds, int(m.group(1)) if m else -1, table.split("\n\n")[0]


def print_measures(rows) -> None:
    """A two-column markdown table (measure, value)."""
    width = max(len(k) for k, _ in rows)
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=2000)
    p.add_argument(
        "--layout",
        choices=["gre", "megre", "swi"],
        default="gre",
        help="gre: T1w + swi/ part-mag/phase GRE with sidecars; megre: T1w + 3-echo mag/phase",
    )
    p.add_argument(
        "--keep", type=Path, help="build the layout here and keep it (default: a temp folder)"
    )
    args = p.parse_args(argv)

    base = args.keep or Path(tempfile.mkdtemp(prefix="cmb-bench-dag-"))
    try:
        bids = base / "bids"
        t0 = time.perf_counter()
        if not bids.exists():
            n_files = make_layout(bids, args.subjects, args.layout)
        else:
            n_files = sum(1 for _ in bids.rglob("*.nii.gz"))
        t_layout = time.perf_counter() - t0
        work = base / "run"
        shutil.rmtree(work, ignore_errors=True)
        out = work / "derivatives" / "cmb"
        first, jobs, table = dry_run(bids, out, work)
        second, _, _ = dry_run(bids, out, work)
        quiet, _, _ = dry_run(bids, out, work, "--quiet")
        load = os.getloadavg()[0]
        rows = [
            ("subjects", f"{args.subjects}"),
            ("layout", f"{args.layout} ({n_files} NIfTI files, empty)"),
            ("jobs in the DAG", f"{jobs}"),
            ("layout written in", f"{t_layout:.1f} s"),
            ("snakemake -n, first (builds the pybids index)", f"{first:.1f} s"),
            ("snakemake -n, again (reuses the index)", f"{second:.1f} s"),
            ("snakemake -n --quiet (no job listing printed)", f"{quiet:.1f} s"),
            ("target", "<= 60 s"),
            ("load average (1 min) at the end", f"{load:.1f} on {os.cpu_count()} cores"),
        ]
        print_measures(rows)
        print()
        print(table)
        return 0 if second <= 60 else 1
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
