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
"""

from __future__ import annotations

import argparse
import re
import sys
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
    texts = [p.read_text(encoding="utf-8") for p in [repo / "Snakefile", *sorted((repo / "rules").glob("*.smk"))]]
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


def planned_jobs(log_text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(rule, jobid) of every job the head printed as a rule job, and local rule names."""
    remote: list[tuple[str, str]] = []
    local: list[str] = []
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        m = JOB_HEADER.match(line)
        if not m:
            continue
        jobid = ""
        for nxt in lines[i + 1:i + 12]:
            j = re.match(r"^\s*jobid:\s*(\d+)", nxt)
            if j:
                jobid = j.group(1)
                break
        if m.group(1) == "localrule":
            local.append(m.group(2))
        else:
            remote.append((m.group(2), jobid))
    return remote, local


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

    remote, local = planned_jobs(log_text)
    submitted = {}  # snakemake jobid -> (slurm jobid, log path)
    for m in re.finditer(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: ([^)]*)\)", log_text):
        submitted[m.group(1)] = (m.group(2), m.group(3))
    ctld_ids = set(re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", ctld))
    n_groups = len(re.findall(r"Group job \w+ \(jobs in lexicogr\. order\):", log_text))
    print(f"  {len(remote)} rule job(s) for SLURM ({', '.join(sorted(set(r for r, _ in remote)))}), "
          f"{n_groups} group job(s); {len(submitted)} sbatch submission(s); "
          f"{len(local)} local job(s) ({', '.join(sorted(set(local))) or 'none'})")

    # 1. every submission reached slurmctld as a batch job
    problems = []
    if not submitted:
        problems.append("the run submitted nothing to SLURM")
    for sm_id, (slurm_id, _) in sorted(submitted.items()):
        if slurm_id not in ctld_ids:
            problems.append(f"snakemake job {sm_id}: SLURM job {slurm_id} not in the slurmctld log")
    verdict("every sbatch submission of the run is a batch job in the slurmctld log", problems)

    # 2. every rule job ran inside a SLURM job: its own, or its group's
    problems = []
    executed_in_slurm: list[str] = []
    for path in sorted({p for _, p in submitted.values()}):
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            problems.append(f"SLURM job log missing: {path} ({e})")
            continue
        executed_in_slurm += [m.group(2) for line in text.splitlines() if (m := JOB_HEADER.match(line))]
        if not re.search(r"Finished jobid: \d+|steps \(100%\) done", text):
            problems.append(f"SLURM job log shows no finished job: {path}")
    want = sorted(r for r, _ in remote)
    got = sorted(executed_in_slurm)
    if want != got:
        problems.append(f"rule jobs planned for SLURM {want} != rule jobs run in SLURM job logs {got}")
    verdict("every non-local rule job ran inside a SLURM job (per-job SLURM logs)", problems)

    # 3. only rules declared local ran on the submit host
    allowed = declared_local_rules(repo)
    stray = sorted(set(local) - allowed)
    verdict("only rules declared local ran on the submit host",
            [f"ran locally but not declared local: {', '.join(stray)}"] if stray else [])

    # 4. GPU requests, from scontrol show job -o of every submitted job
    jobs = {}
    for line in scontrol.splitlines():
        m = re.search(r"\bJobId=(\d+)\b", line)
        if m:
            jobs[m.group(1)] = line
    gpu_rule = args.expect_gpu_rule
    in_dag = any(r == gpu_rule for r, _ in remote)
    problems = []
    n_gpu = 0
    for sm_id, (slurm_id, path) in sorted(submitted.items()):
        line = jobs.get(slurm_id)
        if line is None:
            problems.append(f"SLURM job {slurm_id} missing from scontrol show job")
            continue
        asks_gpu = bool(re.search(r"TresPerJob=\S*gpu|TresPerNode=\S*gpu|AllocTRES=\S*gres/gpu", line))
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
        verdict(f"the {n_gpu} {gpu_rule} job(s) asked SLURM for a GPU (gres/gpu), no other job did", problems)
    else:
        print(f"  [SKIP] GPU request of {gpu_rule}: the rule is not in this workflow's DAG yet")
        verdict("no CPU job asked SLURM for a GPU", problems)

    return 1 if failures else 0


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
    args = p.parse_args(argv)
    if args.cmd == "default-resources":
        print(" ".join(default_resources(args.profile)))
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
