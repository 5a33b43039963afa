"""Snakemake's own CPU time on many short jobs, with and without its job-rate limiter.

The local profile sets ``max-jobs-per-timespan: 100000/30s`` and the Snakefile cancels
the limiter's pending timers when the run ends (see the comments there). This benchmark
shows why, on a workflow of trivial jobs that has nothing else in it: ``--n`` chains of
two ``sleep`` jobs, run with ``--cores 2``. It prints the Snakemake process's own
user+system CPU time (``getrusage(RUSAGE_SELF)`` in ``onsuccess``) and the wall time, for

- ``default``: Snakemake's default ``--max-jobs-per-timespan 100/1s``;
- ``100000/30s``: the workflow's setting, timers cancelled at the end as the Snakefile does;
- ``no limiter``: the limiter removed from Snakemake's scheduler (a private attribute,
  here only as the floor to compare with; the workflow does not do this).

    python bench/bench_scheduler.py [--n 400] [--sleep 0.2]
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SNAKEFILE = """
import resource
import threading

rule all:
    input: expand("out/{{i}}.b", i=range({n}))

rule a:
    output: "out/{{i}}.a"
    shell: "sleep {sleep}; touch {{output}}"

rule b:
    input: "out/{{i}}.a"
    output: "out/{{i}}.b"
    shell: "sleep {sleep}; touch {{output}}"

onstart:
    if config.get("no_limiter") and workflow.local_exec and getattr(workflow, "scheduler", None) is not None:
        workflow.scheduler.job_rate_limiter = None

onsuccess:
    r = resource.getrusage(resource.RUSAGE_SELF)
    print(f"SELF_CPU {{r.ru_utime + r.ru_stime:.2f}}")
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()
"""


def run(folder: Path, extra: list[str]) -> tuple[float, float]:
    for p in (folder / "out").glob("*"):
        p.unlink()
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "-q", *extra],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    m = re.search(r"SELF_CPU ([\d.]+)", proc.stdout + proc.stderr)
    if m is None:
        raise RuntimeError((proc.stdout + proc.stderr)[-2000:])
    return float(m.group(1)), wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=400, help="chains of two jobs")
    p.add_argument("--sleep", type=float, default=0.2, help="seconds per job")
    args = p.parse_args()
    cases = [
        ("default (100/1s)", []),
        ("100000/30s (the local profile)", ["--max-jobs-per-timespan", "100000/30s"]),
        ("no limiter (private attribute, floor)", ["--config", "no_limiter=1"]),
    ]
    print(
        f"{2 * args.n} jobs of {args.sleep} s, --cores 2; {platform.machine()}, Python {platform.python_version()}\n"
    )
    print("| limiter | Snakemake CPU (s) | wall (s) |\n|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="cmb-bench-scheduler-") as tmp:
        folder = Path(tmp)
        (folder / "out").mkdir()
        (folder / "Snakefile").write_text(SNAKEFILE.format(n=args.n, sleep=args.sleep))
        for name, extra in cases:
            cpu, wall = run(folder, extra)
            print(f"| {name} | {cpu:.1f} | {wall:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
