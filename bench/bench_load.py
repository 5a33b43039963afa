"""Load benchmark: the whole workflow on an N-subject ``tiny`` synthetic cohort.

Reports throughput, peak memory of the whole process tree (Snakemake and its jobs,
sampled every 0.2 s with psutil), Snakemake's own overhead and leaked temporary files:

- ``job time / cores``: the sum of the jobs' wall times (their ``benchmark:`` files)
  divided by ``--cores``, i.e. the wall time a perfect scheduler would need;
- ``overhead`` = wall time - job time / cores: Snakemake start-up, DAG building,
  job bookkeeping, and cores left idle (e.g. waiting for the last long job);
- ``DAG`` is timed on its own with ``snakemake -n`` after the run (nothing to do);
- leaked temporary files: anything left in the run's ``TMPDIR`` (a fresh folder),
  and atomic-write leftovers (``.*.tmp*``) or empty placeholders under the output.

    python bench/bench_load.py --n-subjects 8 [--cores 2] [--work /tmp/cmb-bench-load] [--t1w]
        [--config register='{syn: false}']

Until the detector's weights ship (cmb/detect/weights/default/model.safetensors) the
run stops after registration and the QC figures; afterwards it runs ``all``.
The cohort is generated once per work folder (not timed here; see bench_synth.py).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "cmb" / "detect" / "weights" / "default" / "model.safetensors"


def _synth(bids: Path, n: int, seed: int, t1w: bool) -> None:
    if (bids / "dataset_description.json").is_file():
        return
    tmp = bids.with_name(bids.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "cmb.cli",
        "synth",
        "--out",
        str(tmp),
        "--preset",
        "tiny",
        "--n-subjects",
        str(n),
        "--seed",
        str(seed),
    ] + (["--t1w"] if t1w else [])
    print(f"generating {n} tiny subjects (not timed) ...", flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    tmp.rename(bids)


def _targets(bids: Path, out: Path) -> list[str]:
    if WEIGHTS.is_file():
        return []  # the default target: failures.csv and everything it needs
    subs = sorted(p.name for p in bids.glob("sub-*") if p.is_dir())
    return [
        f"{out}/status/{rule}/{s}/{s}_status.json"
        for s in subs
        for rule in ("register_to_mni", "plot_brain_mask", "plot_registration")
    ]


class _TreeSampler(threading.Thread):
    """Peak summed RSS of a process and all its descendants, and the peak of any one of them."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_total = 0
        self.peak_one = 0
        self.peak_one_name = ""
        self.max_procs = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                if rss > self.peak_one:
                    self.peak_one = rss
                    try:
                        self.peak_one_name = " ".join(p.cmdline()[1:4])[:80]
                    except psutil.Error:
                        pass
            self.peak_total = max(self.peak_total, total)
            self.max_procs = max(self.max_procs, len(procs))
            self.stop.wait(self.interval)


def _job_times(out: Path) -> dict[str, list[float]]:
    """Rule -> wall seconds of each job, from the benchmark files."""
    times: dict[str, list[float]] = defaultdict(list)
    for tsv in (out / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(out / "benchmarks").parts[0]
        with open(tsv, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows:
            times[rule].append(float(rows[-1]["s"]))
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-subjects", type=int, default=8)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/cmb-bench-load"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--t1w", action="store_true", help="subjects with a T1w (registration through it)"
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the outputs of an earlier run (default: rerun all)",
    )
    p.add_argument(
        "--config",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="more workflow settings, as snakemake --config, e.g. register='{syn: false}'",
    )
    args = p.parse_args(argv)

    work = args.work.absolute()
    bids = work / f"bids-n{args.n_subjects}-seed{args.seed}{'-t1w' if args.t1w else ''}"
    out = work / "derivatives" / "cmb"
    tmpdir = work / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    _synth(bids, args.n_subjects, args.seed, args.t1w)
    if not args.keep:
        for d in (out, out.with_name("cmb-work"), tmpdir, work / ".snakemake"):
            shutil.rmtree(d, ignore_errors=True)
    tmpdir.mkdir(exist_ok=True)

    env = dict(os.environ, TMPDIR=str(tmpdir))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    base = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(work),
        "--config",
        f"bids_dir={bids}",
        f"output_dir={out}",
        *args.config,
    ]
    targets = _targets(bids, out)
    cmd = [
        *base,
        "--profile",
        str(REPO / "profiles" / "local"),
        "--cores",
        str(args.cores),
        "--",
        *targets,
    ]
    print(f"running {args.n_subjects} subjects on {args.cores} cores ...", flush=True)
    t0 = time.perf_counter()
    t0_epoch = time.time()
    log = open(work / "snakemake.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    sampler = _TreeSampler(proc.pid)
    sampler.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    log.close()
    if rc != 0:
        print((work / "snakemake.log").read_text()[-4000:])
        print(f"snakemake exited with {rc}")
        return rc

    t1 = time.perf_counter()
    dry = subprocess.run([*base, "-n", "--", *targets], env=env, capture_output=True, text=True)
    dag = time.perf_counter() - t1
    nothing = "Nothing to be done" in dry.stdout + dry.stderr

    times = _job_times(out)
    job_sum = sum(sum(v) for v in times.values())
    per_core = job_sum / args.cores
    leaked_tmp = sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*"))
    partials = sorted(str(p.relative_to(out)) for p in out.rglob(".*.tmp*"))
    failed = (
        (out / "failures.csv").read_text().count("\n") - 1
        if (out / "failures.csv").is_file()
        else None
    )
    status_failed = sum(
        '"status": "ok"' not in f.read_text() for f in (out / "status").rglob("*.json")
    )

    pages = sorted(p.stat().st_mtime for p in out.glob("sub-*/sub-*_report.html"))
    tables = sorted((out / "cohort").glob("*.csv")) + [out / "failures.csv"]

    print()
    print(
        f"machine: {platform.machine()}, {psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
        f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}"
    )
    print(
        f"targets: {'all (failures.csv)' if not targets else 'up to register_to_mni and plot_qc'}"
        + (f"; settings: {' '.join(args.config)}" if args.config else "")
    )
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| subjects | {args.n_subjects} |")
    print(f"| wall time | {wall:.0f} s |")
    print(
        f"| throughput | {args.n_subjects / wall * 3600:.0f} subjects/hour ({wall / args.n_subjects:.1f} s/subject) |"
    )
    if pages:
        print(
            f"| first / median / last subject page written | {pages[0] - t0_epoch:.0f} / "
            f"{pages[len(pages) // 2] - t0_epoch:.0f} / {pages[-1] - t0_epoch:.0f} s after the start "
            f"({len(pages)} pages) |"
        )
    print(f"| job time / cores | {per_core:.0f} s (sum of job wall times {job_sum:.0f} s) |")
    print(
        f"| Snakemake overhead (wall - job time / cores) | {wall - per_core:.0f} s "
        f"({100 * (wall - per_core) / wall:.0f}% of wall) |"
    )
    print(
        f"| DAG build + nothing-to-do check (`-n`) | {dag:.1f} s ({'nothing to do' if nothing else 'JOBS LEFT'}) |"
    )
    print(f"| peak RSS, whole process tree | {sampler.peak_total / 2**30:.2f} GiB |")
    print(
        f"| peak RSS, one process | {sampler.peak_one / 2**30:.2f} GiB ({sampler.peak_one_name}) |"
    )
    print(f"| most processes at once | {sampler.max_procs} |")
    for t in tables:
        if t.is_file():
            rows = t.read_text().count("\n") - 1
            print(f"| {t.relative_to(out)} | {t.stat().st_size / 1024:.1f} KiB, {rows} rows |")
    print(f"| leaked files in TMPDIR | {len(leaked_tmp)} |")
    print(f"| atomic-write leftovers under the output | {len(partials)} |")
    print(
        f"| stage records not ok | {status_failed} |"
        + ("" if failed is None else f" failures.csv rows: {failed} |")
    )
    print()
    print("| rule | jobs | mean s | max s | total s |")
    print("|---|---|---|---|---|")
    for rule, v in sorted(times.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {rule} | {len(v)} | {sum(v) / len(v):.1f} | {max(v):.1f} | {sum(v):.0f} |")
    if leaked_tmp:
        print("\nleaked:", *leaked_tmp[:20], sep="\n  ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
