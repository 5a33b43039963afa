"""Benchmark `cmb synth`: seconds per subject and peak memory per preset, and seed determinism.

Each preset runs in a fresh child process (so its peak RSS is its own), after a
warm-up that builds or loads the cached MNI head model (reported separately).

    python bench/bench_synth.py [--presets tiny swi-3t ...] [--subjects 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
from cmb.synth import SynthOptions, synthesize
from cmb.synth.anatomy import build_head_model
from cmb.synth.presets import PRESETS
preset, n, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
t = time.perf_counter()
build_head_model(PRESETS.get(preset, PRESETS["swi-3t"]).model_step)
setup = time.perf_counter() - t
times = []
def log(msg):
    times.append(time.perf_counter())
t0 = time.perf_counter()
synthesize(SynthOptions(out=out, n_subjects=n, seed=1, preset=preset), log=log)
per = [b - a for a, b in zip([t0] + times[:-1], times)]
print(json.dumps({"setup_s": setup, "per_subject_s": per}))
"""


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.nii.gz")):
        import nibabel as nib

        h.update(nib.load(p).get_fdata().tobytes())
    return h.hexdigest()[:16]


def run(preset: str, n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bids"
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, preset, str(n), str(out)],
            capture_output=True,
            text=True,
            check=True,
        )
        rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["peak_rss_gb"] = max(rss_kb, before) / 1024**2
        res["preset"] = preset
        return res


def determinism(preset: str = "tiny") -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        digests = []
        for name in ("a", "b"):
            out = Path(tmp) / name
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cmb.cli",
                    "synth",
                    "--out",
                    str(out),
                    "--n-subjects",
                    "2",
                    "--seed",
                    "9",
                    "--preset",
                    preset,
                ],
                check=True,
                capture_output=True,
            )
            digests.append(_digest(out))
        return digests[0] == digests[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--presets", nargs="+", default=["tiny", "swi-3t", "gre-1.5t", "gre-3t", "megre"]
    )
    ap.add_argument("--subjects", type=int, default=3)
    args = ap.parse_args()
    print(f"# cmb synth benchmark, {os.cpu_count()} CPUs, torch threads default")
    print(
        "| preset | subjects | head model load (s) | median s/subject | max s/subject | peak RSS (GB) |"
    )
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        n = args.subjects
        r = run(preset, n)
        per = sorted(r["per_subject_s"])
        print(
            f"| {preset} | {n} | {r['setup_s']:.1f} | {per[len(per) // 2]:.1f} | {per[-1]:.1f} | "
            f"{r['peak_rss_gb']:.2f} |",
            flush=True,
        )
    t = time.perf_counter()
    same = determinism()
    print(
        f"\nsame seed, identical voxel data (tiny, 2 subjects, two runs): {same} ({time.perf_counter() - t:.0f} s)"
    )


if __name__ == "__main__":
    main()
