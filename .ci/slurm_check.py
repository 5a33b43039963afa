"""Helpers of .ci/slurm_test.sh (a real single-node SLURM run of profiles/slurm).

python .ci/slurm_check.py default-resources PROFILE_YAML
    print the profile's default-resources as KEY=VALUE words (to append one on the
    command line: --default-resources on the command line replaces the profile's list)

python .ci/slurm_check.py check --repo REPO --log SNAKEMAKE_LOG --slurmctld-log LOG
                                --scontrol SCONTROL_DUMP [--expect-gpu-rule detect_cmb]
    assert that every non-local job of the run went through sbatch, that only rules
    declared local ran on the submit host, and that the jobs of the GPU rule (when it
    is in the DAG) asked SLURM for a GPU while the others did not. Prints each
    assertion that ran; exit 1 on the first failed group of assertions.

python .ci/slurm_check.py array --scontrol SCONTROL_DUMP --rule detect_cmb --expect N
    assert that the N jobs of RULE ran as the tasks of one SLURM array job, each
    asking for a GPU (a rerun with --slurm-array-jobs RULE).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path


def default_resources(profile: Path) -> list[str]:
    import yaml

    cfg = yaml.safe_load(profile.read_text(encoding="utf-8")) or {}
    res = cfg.get("default-resources") or {}
    if isinstance(res, dict):
        return [f"{k}={v}" for k, v in res.items()]
    return [str(r) for r in res]


def declared_local_rules(repo: Path) -> set[str]:
    """Rules that run on the submit host: ``localrule: True``, ``localrules:`` or no action."""
    local: set[str] = set()
    texts = [
        p.read_text(encoding="utf-8")
        for p in [repo / "Snakefile", *sorted((repo / "rules").glob("*.smk"))]
    ]
    for text in texts:
        for m in re.finditer(r"^localrules:\s*(.+)$", text, re.MULTILINE):
            local.update(n.strip() for n in m.group(1).split(",") if n.strip())
        blocks = re.split(r"^rule\s+(\w+)\s*:", text, flags=re.MULTILINE)
        for name, body in zip(blocks[1::2], blocks[2::2]):
            if re.search(r"^\s+localrule:\s*True", body, re.MULTILINE):
                local.add(name)
            elif not re.search(r"^\s+(shell|run|script|wrapper|notebook|cwl):", body, re.MULTILINE):
                local.add(name)
    return local


JOB_HEADER = re.compile(r"^\s*(?:\[[^\]]*\]\s*)?(localrule|rule)\s+(\w+):\s*$")


def job_stats(log_text: str) -> Counter:
    """The head's "Job stats" table: jobs per rule in the DAG of the run."""
    stats: Counter = Counter()
    m = re.search(
        r"^Job stats:\n.*?\n-+\s+-+\n(.*?)^total\s+\d+", log_text, re.MULTILINE | re.DOTALL
    )
    for line in m.group(1).splitlines() if m else []:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            stats[parts[0]] += int(parts[1])
    return stats


def rule_blocks(text: str) -> list[tuple[str, str, str]]:
    """(kind, rule, wildcards) of every job block Snakemake printed ("rule X:" + details)."""
    out = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = JOB_HEADER.match(line)
        if not m:
            continue
        wildcards = ""
        for nxt in lines[i + 1 : i + 15]:
            if JOB_HEADER.match(nxt) or not nxt.strip():
                break
            w = re.match(r"^\s*wildcards:\s*(.*)$", nxt)
            if w:
                wildcards = w.group(1).strip()
                break
        out.append((m.group(1), m.group(2), wildcards))
    return out


def asks_for_gpu(scontrol_line: str) -> bool:
    """Whether a ``scontrol show job -o`` line requests or holds a GPU."""
    return bool(
        re.search(r"TresPerJob=\S*gpu|TresPerNode=\S*gpu|AllocTRES=\S*gres/gpu", scontrol_line)
    )


def check(args) -> int:
    repo = Path(args.repo)
    log_text = Path(args.log).read_text(encoding="utf-8", errors="replace")
    ctld = Path(args.slurmctld_log).read_text(encoding="utf-8", errors="replace")
    scontrol = Path(args.scontrol).read_text(encoding="utf-8", errors="replace")
    failures: list[str] = []

    def verdict(name: str, problems: list[str]) -> None:
        print(f"  [{'PASS' if not problems else 'FAIL'}] {name}")
        for p in problems:
            print(f"         {p}")
        failures.extend(problems)

    stats = job_stats(log_text)
    local = Counter(rule for kind, rule, _ in rule_blocks(log_text) if kind == "localrule")
    remote = stats - local  # jobs the head handed to the SLURM executor
    submitted = {}  # snakemake jobid -> (slurm jobid, log path)
    for m in re.finditer(
        r"Job (\S+) has been submitted with SLURM jobid (\d+) \(log: ([^)]*)\)", log_text
    ):
        submitted[m.group(1)] = (m.group(2), m.group(3))
    ctld_ids = set(re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", ctld))
    n_groups = sum(
        1 for _, path in submitted.values() if "/group_" in path
    )  # plugin's log folder names
    print(
        f"  DAG: {sum(stats.values())} jobs; {sum(remote.values())} for SLURM "
        f"({', '.join(f'{r} x{n}' for r, n in sorted(remote.items()))}) in {len(submitted)} sbatch "
        f"submission(s), {n_groups} of them group jobs; {sum(local.values())} local "
        f"({', '.join(sorted(local)) or 'none'})"
    )
    if not stats:
        print("  [FAIL] no 'Job stats' table in the Snakemake log")
        return 1

    # 1. every submission reached slurmctld as a batch job
    problems = []
    if not submitted:
        problems.append("the run submitted nothing to SLURM")
    for sm_id, (slurm_id, _) in sorted(submitted.items()):
        if slurm_id not in ctld_ids:
            problems.append(f"snakemake job {sm_id}: SLURM job {slurm_id} not in the slurmctld log")
    verdict("every sbatch submission of the run is a batch job in the slurmctld log", problems)

    # 2. every rule job ran inside a SLURM job: its own, or its group's. Each job's
    # Snakemake prints its rules (the group level and the srun level both): count
    # distinct (rule, wildcards) over the logs of the submitted jobs.
    problems = []
    ran: set[tuple[str, str]] = set()
    for path in sorted({p for _, p in submitted.values()}):
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            problems.append(f"SLURM job log missing: {path} ({e})")
            continue
        ran.update((rule, wc) for _, rule, wc in rule_blocks(text))
        if "Finished jobid" not in text:
            problems.append(f"SLURM job log shows no finished job: {path}")
    in_slurm = Counter(rule for rule, _ in ran)
    if in_slurm != remote:
        problems.append(
            f"jobs per rule for SLURM {dict(sorted(remote.items()))} != "
            f"jobs per rule in the SLURM job logs {dict(sorted(in_slurm.items()))}"
        )
    verdict(
        f"each of the {sum(remote.values())} non-local jobs ran inside a SLURM job "
        f"(its own or its group's, per-job SLURM logs)",
        problems,
    )

    # 3. only rules declared local ran on the submit host
    allowed = declared_local_rules(repo)
    stray = sorted(set(local) - allowed)
    verdict(
        "only rules declared local ran on the submit host",
        [f"ran locally but not declared local: {', '.join(stray)}"] if stray else [],
    )

    # 4. GPU requests, from scontrol show job -o of every submitted job
    jobs = {}
    for line in scontrol.splitlines():
        m = re.search(r"\bJobId=(\d+)\b", line)
        if m:
            jobs[m.group(1)] = line
    gpu_rule = args.expect_gpu_rule
    in_dag = remote.get(gpu_rule, 0) > 0
    problems = []
    n_gpu = 0
    for sm_id, (slurm_id, path) in sorted(submitted.items()):
        line = jobs.get(slurm_id)
        if line is None:
            problems.append(f"SLURM job {slurm_id} missing from scontrol show job")
            continue
        asks_gpu = asks_for_gpu(line)
        comment = re.search(r"\bComment=(\S+)", line)
        comment = comment.group(1) if comment else ""
        is_gpu_rule = comment.startswith(f"rule_{gpu_rule}")
        if is_gpu_rule:
            n_gpu += 1
            if not asks_gpu:
                problems.append(f"{gpu_rule} job {slurm_id} did not ask for a GPU: {line[:400]}")
        elif asks_gpu:
            problems.append(f"CPU job {slurm_id} ({comment}) asked for a GPU")
    if gpu_rule and in_dag:
        if n_gpu == 0:
            problems.append(f"{gpu_rule} is in the DAG but no submitted SLURM job carries its name")
        verdict(
            f"the {n_gpu} {gpu_rule} job(s) asked SLURM for a GPU (gres/gpu), no other job did",
            problems,
        )
    else:
        print(f"  [SKIP] GPU request of {gpu_rule}: the rule is not in this workflow's DAG yet")
        verdict("no CPU job asked SLURM for a GPU", problems)

    return 1 if failures else 0


def check_array(args) -> int:
    """The jobs of ``args.rule`` in the dump are ``args.expect`` tasks of one array job, each with a GPU."""
    tasks = [
        line
        for line in Path(args.scontrol).read_text().splitlines()
        if re.search(rf"\bComment=rule_{re.escape(args.rule)}(_wildcards_\S*)?(\s|$)", line)
        and "ArrayJobId=" in line
    ]
    arrays = Counter(re.search(r"\bArrayJobId=(\d+)", line).group(1) for line in tasks)
    no_gpu = [line[:200] for line in tasks if not asks_for_gpu(line)]
    ok = len(arrays) == 1 and next(iter(arrays.values())) == args.expect and not no_gpu
    tag = "PASS" if ok else "FAIL"
    print(
        f"  [{tag}] with --slurm-array-jobs {args.rule}, its {args.expect} jobs ran as one SLURM array "
        f"with a GPU each (array tasks per array job: {dict(arrays)})"
    )
    for line in no_gpu:
        print(f"         no GPU asked: {line}")
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("default-resources")
    d.add_argument("profile", type=Path)
    c = sub.add_parser("check")
    c.add_argument("--repo", required=True)
    c.add_argument("--log", required=True)
    c.add_argument("--slurmctld-log", required=True)
    c.add_argument("--scontrol", required=True)
    c.add_argument("--expect-gpu-rule", default="detect_cmb")
    a = sub.add_parser("array")
    a.add_argument("--scontrol", required=True)
    a.add_argument("--rule", default="detect_cmb")
    a.add_argument("--expect", type=int, required=True)
    args = p.parse_args(argv)
    if args.cmd == "array":
        return check_array(args)
    if args.cmd == "default-resources":
        print(" ".join(default_resources(args.profile)))
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
