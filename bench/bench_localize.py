"""Localization accuracy on synthetic truth, through the workflow's real registration.

Synthesizes ``--n-subjects`` tiny subjects (``cmb synth --preset tiny --t1w``), runs
the workflow up to each subject's native MARS map (ingest, preprocess, ANTs
registration, label warp), then localizes one truth-derived candidate per true CMB
(``cmb.synth.oracle_detections``) and prints how often the MARS category, region and
hemisphere match the simulator's truth, with the MNI position error::

    python bench/bench_localize.py --work /tmp/bench-localize --n-subjects 6 --n-cmb 20
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cmb.cli import main as cmb_main
from cmb.localize import localize_subject
from cmb.synth.oracle_detections import subject_inputs, truth_candidates

REPO = Path(__file__).resolve().parents[1]

FIELDS = ("mars_category", "mars_region", "hemisphere")


def run_workflow(bids: Path, out: Path, work: Path, subjects: list[str], cores: int) -> float:
    targets = [str(out / f"sub-{s}" / "anat" / f"sub-{s}_desc-mars_dseg.nii.gz") for s in subjects]
    env = dict(
        os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(work),
            "--cores",
            str(cores),
            "--quiet",
            "--config",
            f"bids_dir={bids}",
            f"output_dir={out}",
            "--",
            *targets,
        ],
        check=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--n-subjects", type=int, default=6)
    p.add_argument("--n-cmb", type=int, default=20)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args(argv)

    bids, out = args.work / "bids", args.work / "out"
    if not bids.exists():
        cmb_main(
            [
                "synth",
                "--out",
                str(bids),
                "--n-subjects",
                str(args.n_subjects),
                "--seed",
                str(args.seed),
                "--preset",
                "tiny",
                "--t1w",
                "--n-cmb",
                str(args.n_cmb),
            ]
        )
    subjects = [f"{s:02d}" for s in range(1, args.n_subjects + 1)]
    wall = run_workflow(bids, out, args.work, subjects, args.cores)

    rows = []
    for sub in subjects:
        fx = truth_candidates(bids, out, sub, args.work / "cand" / f"sub-{sub}")
        table = localize_subject(
            participant_id=sub,
            session_id=None,
            candidates=fx["paths"]["table"],
            candidates_json=fx["paths"]["sidecar"],
            candidates_dseg=fx["paths"]["dseg"],
            prob=fx["paths"]["prob"],
            config_sha256="0" * 64,
            **subject_inputs(out, sub),
            out_table=args.work / "loc" / f"sub-{sub}.tsv",
            out_json=args.work / "loc" / f"sub-{sub}.json",
            out_dseg=args.work / "loc" / f"sub-{sub}_dseg.nii.gz",
            out_prob=args.work / "loc" / f"sub-{sub}_probseg.nii.gz",
        ).set_index("cmb_id")
        for cid, t in fx["truth"].items():
            row = table.loc[str(cid)]
            err = np.linalg.norm(
                np.array([float(row[f"mni_{a}"]) for a in "xyz"]) - [t.mni_x, t.mni_y, t.mni_z]
            )
            rows.append(
                {
                    "subject": sub,
                    "mni_error_mm": err,
                    "true_category": t.mars_category,
                    "true_region": t.mars_region,
                    **{f: row[f] == getattr(t, f) for f in FIELDS},
                }
            )
    df = pd.DataFrame(rows)
    summary = pd.DataFrame(
        {
            "cmbs": [len(df)],
            **{f"{f}_agreement": [df[f].mean()] for f in FIELDS},
            "mni_error_median_mm": [df["mni_error_mm"].median()],
            "mni_error_p95_mm": [df["mni_error_mm"].quantile(0.95)],
            "workflow_s": [wall],
        }
    )
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    misses = df[~df["mars_category"]]
    if len(misses):
        print("\ncategory misses (true category, true region, MNI error):")
        print(
            misses[["subject", "true_category", "true_region", "mni_error_mm"]].to_string(
                index=False
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
