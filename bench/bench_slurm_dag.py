"""SLURM scale of the workflow: dry-run time with profiles/slurm and sbatch calls per subject.

On the empty-file BIDS layout of bench_dag.py (default 2,000 subjects), runs
``snakemake -n --profile profiles/slurm`` three times: the first builds the pybids
index, the second reuses it (the time a user waits before the first sbatch), the third
uses a copy of the profile without ``groups``. From the job listings it counts what
the SLURM executor would submit: one sbatch per group job, one per ungrouped rule job;
local rules run on the submit host. It also times ``snakemake --list-rules``, the
Snakefile read with input planning that every SLURM job repeats when it starts.

    python bench/bench_slurm_dag.py [--subjects 2000] [--layout gre|megre|swi] [--profile profiles/slurm]

No cluster is needed: a dry run never calls sbatch. When the detector's weights are not
in the repository yet, empty stand-ins are given to the dry run (it only checks that
input files exist).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dag import make_layout, print_measures  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HEADER = re.compile(
    r"^(?P<indent>\s*)(?:\[[^\]]*\]\s*)?(?:(?P<kind>localrule|rule)\s+(?P<rule>\w+):|Group job)"
)


def dry_run(
    bids: Path, out: Path, work: Path, profile: Path, extra: list[str]
) -> tuple[float, str]:
    env = dict(
        os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--profile",
        str(profile),
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(work),
        "--config",
        f"bids_dir={bids}",
        f"output_dir={out}",
        *extra,
    ]  # extra: more --config
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"snakemake -n failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def local_rules() -> set[str]:
    """Rules declared local (a dry run prints them as plain rules): from .ci/slurm_check.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("slurm_check", REPO / ".ci" / "slurm_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.declared_local_rules(REPO)


def parse_time(bids: Path, out: Path, work: Path, extra: list[str]) -> float:
    """Seconds of ``snakemake --list-rules``: reading the Snakefile, input planning included.

    Every SLURM job starts a Snakemake that reads the Snakefile again before it runs its
    rule, so this is a floor on the start-up cost of each job.
    """
    env = dict(
        os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--list-rules",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(work),
        "--config",
        f"bids_dir={bids}",
        f"output_dir={out}",
        *extra,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        sys.exit(f"snakemake --list-rules failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def submissions(text: str, local_names: set[str]) -> dict:
    """Counts of what the SLURM executor would do with the printed job list."""
    top_rules, members, local = Counter(), Counter(), Counter()
    groups = 0
    for line in text.splitlines():
        m = HEADER.match(line)
        if not m:
            continue
        nested = len(m.group("indent")) > 0
        if m.group("rule") is None:
            groups += 1
        elif m.group("kind") == "localrule" or m.group("rule") in local_names:
            local[m.group("rule")] += 1
        elif nested:
            members[m.group("rule")] += 1
        else:
            top_rules[m.group("rule")] += 1
    return {
        "sbatch": groups + sum(top_rules.values()),
        "groups": groups,
        "ungrouped": top_rules,
        "grouped": members,
        "local": local,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=2000)
    p.add_argument("--layout", choices=["gre", "megre", "swi"], default="gre")
    p.add_argument("--profile", type=Path, default=REPO / "profiles" / "slurm")
    p.add_argument(
        "--keep", type=Path, help="build the layout here and keep it (default: a temp folder)"
    )
    args = p.parse_args(argv)

    base = args.keep or Path(tempfile.mkdtemp(prefix="cmb-bench-slurm-dag-"))
    try:
        bids = base / "bids"
        if not bids.exists():
            make_layout(bids, args.subjects, args.layout)
        work = base / "run"
        shutil.rmtree(work, ignore_errors=True)
        out = work / "derivatives" / "cmb"

        extra: list[str] = []
        weights = REPO / "cmb" / "detect" / "weights" / "default"
        if not (weights / "model.safetensors").is_file():
            stand_in = base / "model"
            stand_in.mkdir(exist_ok=True)
            for name in ("model.safetensors", "model_card.json"):
                (stand_in / name).touch()
            extra = [f"detection={{model_dir: {stand_in}}}"]

        ungrouped_profile = base / "profile-ungrouped"
        ungrouped_profile.mkdir(exist_ok=True)
        cfg = yaml.safe_load((args.profile / "config.yaml").read_text(encoding="utf-8"))
        cfg.pop("groups", None)
        cfg.pop("group-components", None)
        (ungrouped_profile / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")

        first, _ = dry_run(bids, out, work, args.profile, extra)
        grouped_s, grouped_text = dry_run(bids, out, work, args.profile, extra)
        ungrouped_s, ungrouped_text = dry_run(bids, out, work, ungrouped_profile, extra)
        startup = parse_time(bids, out, work, extra)
        local_names = local_rules()
        g, u = submissions(grouped_text, local_names), submissions(ungrouped_text, local_names)
        n = args.subjects
        load = os.getloadavg()[0]
        rows = [
            ("subjects", f"{n} ({args.layout} layout, empty files)"),
            ("snakemake -n --profile slurm, first (builds the pybids index)", f"{first:.1f} s"),
            ("snakemake -n --profile slurm, again (reuses the index)", f"{grouped_s:.1f} s"),
            ("snakemake -n, profile without groups", f"{ungrouped_s:.1f} s"),
            (
                "sbatch calls with groups",
                f"{g['sbatch']} ({g['sbatch'] / n:.2f} per subject; "
                f"{g['groups']} group jobs + {sum(g['ungrouped'].values())} single jobs)",
            ),
            ("sbatch calls without groups", f"{u['sbatch']} ({u['sbatch'] / n:.2f} per subject)"),
            (
                "jobs on the submit host (local rules)",
                f"{sum(g['local'].values())} ({', '.join(sorted(g['local'])) or 'none'})",
            ),
            (
                "snakemake --list-rules (Snakefile read, inputs planned: each job's start-up)",
                f"{startup:.1f} s",
            ),
            ("load average (1 min) at the end", f"{load:.1f} on {os.cpu_count()} cores"),
        ]
        print_measures(rows)
        print()
        print("single SLURM jobs with groups, by rule:", dict(sorted(g["ungrouped"].items())))
        print("rule jobs inside group jobs, by rule:", dict(sorted(g["grouped"].items())))
        print("SLURM jobs without groups, by rule:", dict(sorted(u["ungrouped"].items())))
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
