"""Speed and memory of the whole detect stage on one scan (a fresh process per repeat).

    python bench/bench_detect_speed.py --image sub-01_part-mag_desc-preproc_swi.nii.gz \\
        --mask sub-01_part-mag_desc-brain_mask.nii.gz --phase sub-01_part-phase_desc-preproc_swi.nii.gz \\
        --threads 2 --repeats 3 [--gpu]

Each repeat runs ``python -m cmb.detect`` as a separate process (reading the inputs,
loading the model, writing every output), as the Snakemake rule does, and reports
its wall time, the stage timings from its JSON sidecar and its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import pandas as pd


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", required=True)
    p.add_argument("--mask", required=True)
    p.add_argument("--phase")
    p.add_argument("--model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu", action="store_true", help="allow CUDA (default: CPU only)")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            out = {k: str(Path(tmp) / f"r{r}_{k}") for k in ("table.tsv", "side.json", "dseg.nii.gz", "prob.nii.gz")}
            cmd = [sys.executable, "-m", "cmb.detect", "--image", args.image, "--mask", args.mask,
                   "--out-table", out["table.tsv"], "--out-sidecar", out["side.json"], "--out-dseg", out["dseg.nii.gz"],
                   "--out-prob", out["prob.nii.gz"], "--threads", str(args.threads)]
            cmd += ["--phase", args.phase] if args.phase else []
            cmd += ["--model", args.model] if args.model else []
            cmd += [] if args.gpu else ["--cpu"]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            side = json.loads(Path(out["side.json"]).read_text())
            rows.append({"repeat": r + 1, "wall_s": wall, **{f"{k}_s": v for k, v in side["seconds"].items()},
                         "candidates": side["n_candidates"], "device": side["device"],
                         "peak_rss_mb": max(rss, before) / 1024})
    shape = nib.load(args.image).shape
    print(f"{args.image}: {shape}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
