"""Speed and memory of the whole detect stage on one scan (a fresh process per repeat), and CPU/CUDA agreement.

    python bench/bench_detect_speed.py --image sub-01_part-mag_desc-preproc_swi.nii.gz \\
        --mask sub-01_part-mag_desc-brain_mask.nii.gz --phase sub-01_part-phase_desc-preproc_swi.nii.gz \\
        --threads 2 --repeats 3 [--device cpu|cuda|both]

Each repeat runs ``python -m cmb.detect`` as a separate process (reading the inputs,
loading the model, writing every output), as the Snakemake rule does, and reports
its wall time, the stage timings from its JSON sidecar, its peak RSS and, on CUDA,
its peak GPU memory, and whether its candidate table is byte-identical to the first
repeat's (determinism). With ``--device both`` it also compares the CPU and CUDA
candidate tables: the same candidates, and how far their confidences differ.
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
import numpy as np
import pandas as pd


def run_repeats(args, device: str, tmp: Path) -> tuple[list[dict], Path]:
    rows, first = [], None
    for r in range(args.repeats):
        out = {
            k: str(tmp / f"{device}{r}_{k}")
            for k in ("table.tsv", "side.json", "dseg.nii.gz", "prob.nii.gz")
        }
        cmd = [
            sys.executable,
            "-m",
            "cmb.detect",
            "--image",
            args.image,
            "--mask",
            args.mask,
            "--out-table",
            out["table.tsv"],
            "--out-sidecar",
            out["side.json"],
            "--out-dseg",
            out["dseg.nii.gz"],
            "--out-prob",
            out["prob.nii.gz"],
            "--threads",
            str(args.threads),
            "--batch-size",
            str(args.batch_size),
        ]
        cmd += ["--phase", args.phase] if args.phase else []
        cmd += ["--model", args.model] if args.model else []
        cmd += ["--cpu"] if device == "cpu" else []
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        subprocess.run(
            cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wall = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        side = json.loads(Path(out["side.json"]).read_text())
        if side["device"] != device:
            raise SystemExit(f"asked for {device}, the detect stage ran on {side['device']}")
        table = Path(out["table.tsv"]).read_bytes()
        first = first or table
        rows.append(
            {
                "device": device,
                "repeat": r + 1,
                "wall_s": wall,
                **{f"{k}_s": v for k, v in side["seconds"].items()},
                "candidates": side["n_candidates"],
                "peak_rss_mb": max(rss, before) / 1024,
                "gpu_peak_mb": side.get("gpu_peak_mb"),
                "same_table_as_repeat_1": table == first,
            }
        )
    return rows, Path(out["table.tsv"])


def agreement(cpu_table: Path, cuda_table: Path) -> dict:
    """How far the CUDA candidate table is from the CPU one."""
    a = pd.read_csv(cpu_table, sep="\t")
    b = pd.read_csv(cuda_table, sep="\t")
    m = a.merge(b, on=["i", "j", "k"], how="outer", suffixes=("_cpu", "_cuda"), indicator=True)
    both = m[m["_merge"] == "both"]
    diff = (both["confidence_cpu"] - both["confidence_cuda"]).abs()
    return {
        "candidates_cpu": len(a),
        "candidates_cuda": len(b),
        "only_cpu": int((m["_merge"] == "left_only").sum()),
        "only_cuda": int((m["_merge"] == "right_only").sum()),
        "max_abs_confidence_diff": float(diff.max()) if len(diff) else 0.0,
        "median_abs_confidence_diff": float(np.median(diff)) if len(diff) else 0.0,
        "above_threshold_cpu": int(a["above_threshold"].sum()),
        "above_threshold_cuda": int(b["above_threshold"].sum()),
        "above_threshold_disagreements": int(
            (both["above_threshold_cpu"] != both["above_threshold_cuda"]).sum()
        ),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", required=True)
    p.add_argument("--mask", required=True)
    p.add_argument("--phase")
    p.add_argument("--model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", choices=("cpu", "cuda", "both"), default="cpu")
    p.add_argument("--json", help="also write the rows (and the agreement) to this JSON file")
    args = p.parse_args(argv)
    devices = ("cpu", "cuda") if args.device == "both" else (args.device,)
    rows, tables = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for device in devices:
            r, tables[device] = run_repeats(args, device, Path(tmp))
            rows += r
        agree = agreement(tables["cpu"], tables["cuda"]) if len(tables) == 2 else None
    shape = nib.load(args.image).shape
    print(
        f"{args.image}: {shape}, {args.threads} threads, batch {args.batch_size}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if agree:
        print("CPU vs CUDA:", json.dumps(agree))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "agreement": agree}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
