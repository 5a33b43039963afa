"""MARS localization of the detector's matched detections, through the whole workflow (issue 21).

Per cohort: the BIDS cohort is generated (``cmb synth`` for the own simulator, ``cmb crosssim``
for the cross-simulator that training never saw), the default workflow runs end to end
(ingest, preprocess, ANTs registration, detection, localization), and ``cmb.evaluation``
matches each scan's detections table (``desc-cmb_detections.tsv``) to the truth. The table
gives, per cohort, how often a detection that matched a true CMB has the truth's MARS
category, region and hemisphere (the cross-simulator's truth has categories and hemispheres
only: its procedural heads have no atlas regions), and lists each category miss::

    python bench/bench_mars_matched.py --work /work/data/mars-matched --n-subjects 6 --n-cmb 10 \\
        --own-seed 9600 --crosssim-seed 4050

A cohort folder that already holds ``bids/`` is reused (the workflow then reruns only what
is missing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("mars_category", "mars_region", "hemisphere")


def _python(*args: str, log: Path | None = None) -> None:
    env = dict(
        os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    with open(log, "w") if log else open(os.devnull, "w") as out:
        subprocess.run(
            [sys.executable, *args],
            check=True,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def generate(kind: str, bids: Path, n_subjects: int, n_cmb: int, seed: int) -> None:
    common = ["--n-subjects", str(n_subjects), "--seed", str(seed), "--n-cmb", str(n_cmb)]
    if kind == "own":
        _python("-m", "cmb.cli", "synth", "--out", str(bids), "--preset", "mixed", *common)
    else:
        _python("-m", "cmb.crosssim", "--out", str(bids), "--preset", "mixed", *common)


def run_cohort(kind: str, root: Path, args: argparse.Namespace) -> tuple[dict, pd.DataFrame]:
    bids, out, evaluation = root / "bids", root / "out", root / "evaluation"
    if not bids.exists():
        seed = args.own_seed if kind == "own" else args.crosssim_seed
        generate(kind, bids, args.n_subjects, args.n_cmb, seed)
    start = time.perf_counter()
    _python(
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(root / "work"),
        "--profile",
        str(REPO / "profiles" / "local"),
        "--cores",
        str(args.cores),
        "--config",
        f"bids_dir={bids}",
        f"output_dir={out}",
        log=root / "snakemake.log",
    )
    wall = time.perf_counter() - start
    truth = bids / "derivatives" / "cmb-truth"
    _python(
        "-m",
        "cmb.evaluation",
        "--derivatives",
        str(out),
        "--table-suffix",
        "desc-cmb_detections.tsv",
        "--truth",
        str(truth),
        "--out",
        str(evaluation),
    )
    cohort = json.loads((evaluation / "cohort.json").read_text())
    failures = pd.read_csv(out / "failures.csv")
    row = {
        "cohort": "own (cmb synth)" if kind == "own" else "cross-simulator (cmb crosssim)",
        "scans": cohort["n_subjects"],
        "failures": len(failures),
        "cmbs": cohort["n_truth"],
        "matched": cohort["tp"],
        "sensitivity": cohort["sensitivity"],
        "fp_avg": cohort["fp_avg"],
        **{f"{f}_accuracy": cohort.get(f"{f}_accuracy") for f in FIELDS},
        "workflow_s": wall,
    }
    return row, category_misses(evaluation, truth, row["cohort"])


def category_misses(evaluation: Path, truth: Path, cohort: str) -> pd.DataFrame:
    """Matched detections whose MARS category differs from their CMB's, with both sides."""
    det = pd.read_csv(evaluation / "detections.csv", low_memory=False)
    det = det[det["truth_id"].notna() & det["kept"]]
    rows = []
    for _, d in det.iterrows():
        (table,) = truth.rglob(f"{d.subject}_label-CMB_dseg.tsv")  # the scan key names the table
        t = pd.read_csv(table, sep="\t")
        t = t[t["index"] == int(d.truth_id)].iloc[0]
        if str(t.mars_category) != str(d.mars_category):
            rows.append(
                {
                    "cohort": cohort,
                    "scan": d.subject,
                    "cmb": int(d.truth_id),
                    "true_category": t.mars_category,
                    "detected_category": d.mars_category,
                    "detected_region": d.mars_region,
                    "atlas_label": d.atlas_label,
                    "border_distance_mm": d.mars_border_distance_mm,
                }
            )
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--n-subjects", type=int, default=6)
    p.add_argument("--n-cmb", type=int, default=10)
    p.add_argument("--own-seed", type=int, default=9600)
    p.add_argument("--crosssim-seed", type=int, default=4050)
    p.add_argument("--cohorts", nargs="+", choices=("own", "crosssim"), default=["own", "crosssim"])
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args(argv)
    rows, misses = [], []
    for kind in args.cohorts:
        row, miss = run_cohort(kind, args.work / kind, args)
        rows.append(row)
        misses.append(miss)
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))
    misses = pd.concat(misses, ignore_index=True)
    if len(misses):
        print("\ncategory misses:\n")
        print(misses.to_markdown(index=False, floatfmt=".1f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
