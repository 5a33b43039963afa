"""The submit host's load on SLURM: Snakemake's own CPU, sbatch calls and slurmctld's CPU,
with and without the profile's groups and at two job-rate limits.

A workflow of trivial jobs with the cmb DAG's shape and rule names (per subject: ingest ->
preprocess -> register, plot_qc and detect_cmb from preprocess, localize from register
and detect, then the subject report), run through ``profiles/slurm`` (its groups,
squeue status checks) on a real SLURM. Each job sleeps ``--sleep`` seconds, so what is
measured is the orchestration, not the stages. Per case it prints the wall time, the
``sbatch`` submissions, Snakemake's CPU seconds on the submit host (the Snakemake
process and the ``sbatch``/``squeue`` commands it ran: ``getrusage`` self + children
at ``onsuccess``) and slurmctld's CPU seconds over the run (its pid file from
``scontrol show config``). Needs a running cluster (``SLURM_CONF``), e.g. the CI's
single-node one:

    CMB_SLURM_RUN_COMMAND="python bench/bench_slurm_submit.py --partition cmbci" bash .ci/slurm_test.sh
"""

from __future__ import annotations

import argparse
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]

SNAKEFILE = """
import resource
import threading

SUBJECTS = [f"{{i:03d}}" for i in range({n})]

rule all:
    input: expand("out/{{s}}.report", s=SUBJECTS)

rule ingest_swi_phase:
    output: "out/{{s}}.ingest"
    shell: "sleep {sleep}; touch {{output}}"

rule preprocess_swi_phase:
    input: "out/{{s}}.ingest"
    output: "out/{{s}}.preproc"
    shell: "sleep {sleep}; touch {{output}}"

rule register_to_mni:
    input: "out/{{s}}.preproc"
    output: "out/{{s}}.xfm"
    shell: "sleep {sleep}; touch {{output}}"

rule plot_qc:
    input: "out/{{s}}.xfm"
    output: "out/{{s}}.qc"
    shell: "sleep {sleep}; touch {{output}}"

rule detect_cmb:
    input: "out/{{s}}.preproc"
    output: "out/{{s}}.detect"
    shell: "sleep {sleep}; touch {{output}}"

rule localize_cmb:
    input: "out/{{s}}.xfm", "out/{{s}}.detect"
    output: "out/{{s}}.localize"
    shell: "sleep {sleep}; touch {{output}}"

rule report_subject:
    input: "out/{{s}}.localize", "out/{{s}}.qc"
    output: "out/{{s}}.report"
    shell: "sleep {sleep}; touch {{output}}"

onsuccess:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"SELF_CPU {{own.ru_utime + own.ru_stime:.2f}}")
    print(f"CHILDREN_CPU {{children.ru_utime + children.ru_stime:.2f}}")
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()
"""


def slurmctld_process() -> psutil.Process:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True)
    m = re.search(r"^SlurmctldPidFile\s*=\s*(\S+)", out.stdout, re.M)
    if m is None:
        raise RuntimeError("scontrol show config names no SlurmctldPidFile")
    return psutil.Process(int(Path(m.group(1)).read_text().split()[0]))


def profile(folder: Path, partition: str, groups: bool) -> Path:
    """profiles/slurm with the partition filled in, and its groups kept or removed."""
    settings = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    settings["default-resources"]["slurm_partition"] = partition
    settings["set-resources"].pop("detect_cmb", None)  # the trivial jobs ask for no GPU
    if not settings["set-resources"]:
        del settings["set-resources"]
    if not groups:
        settings.pop("groups", None)
        settings.pop("group-components", None)
    out = folder / ("profile-groups" if groups else "profile-no-groups")
    out.mkdir(exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return out


def run_case(folder: Path, prof: Path, limiter: str | None, timeout: int) -> dict:
    shutil.rmtree(folder / "out", ignore_errors=True)
    shutil.rmtree(folder / ".snakemake", ignore_errors=True)
    ctld = slurmctld_process()
    ctld_before = sum(ctld.cpu_times()[:2])
    extra = ["--max-jobs-per-timespan", limiter] if limiter else []
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", str(prof), *extra],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(text[-3000:])
    own = float(re.search(r"SELF_CPU ([\d.]+)", text).group(1))
    children = float(re.search(r"CHILDREN_CPU ([\d.]+)", text).group(1))
    return {
        "wall": wall,
        "sbatch": len(re.findall(r"has been submitted with SLURM jobid", text)),
        "snakemake_cpu": own,
        "commands_cpu": children,
        "slurmctld_cpu": sum(ctld.cpu_times()[:2]) - ctld_before,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--partition", required=True)
    p.add_argument("--subjects", type=int, default=10)
    p.add_argument("--sleep", type=float, default=1.0, help="seconds per job")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per case")
    args = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="cmb-bench-slurm-"))
    (folder / "Snakefile").write_text(SNAKEFILE.format(n=args.subjects, sleep=args.sleep))
    cases = [
        ("groups, default limiter (100/1s)", profile(folder, args.partition, True), None),
        ("no groups, default limiter (100/1s)", profile(folder, args.partition, False), None),
        ("groups, 100/10s", profile(folder, args.partition, True), "100/10s"),
    ]
    print(
        f"machine: {platform.machine()}, {psutil.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; {args.subjects} subjects x 7 jobs of {args.sleep:g} s "
        f"through profiles/slurm, partition {args.partition}"
    )
    print()
    print(
        "| case | wall (s) | sbatch calls | Snakemake CPU (s) | its sbatch/squeue CPU (s) "
        "| slurmctld CPU (s) | submit-host CPU per subject (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, prof, limiter in cases:
        r = run_case(folder, prof, limiter, args.timeout)
        per_subject = (r["snakemake_cpu"] + r["commands_cpu"]) / args.subjects
        print(
            f"| {name} | {r['wall']:.0f} | {r['sbatch']} | {r['snakemake_cpu']:.1f} | "
            f"{r['commands_cpu']:.1f} | {r['slurmctld_cpu']:.1f} | {per_subject:.2f} |",
            flush=True,
        )
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
