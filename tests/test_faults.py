"""Faults, determinism and security of a real workflow run (docs/robustness.md).

One synthetic ``tiny`` subject (with phase) in folders whose names hold shell
metacharacters, its input made read-only, is run twice into the same output path:

- run A: uninterrupted;
- run B: every process of the run SIGKILLed while a job writes an output, then
  ``snakemake --unlock`` (the lock of a killed run stays, as after a power cut) and
  a rerun with the local profile (``rerun-incomplete``).

B must equal A: CSV/TSV/NIfTI byte-identical, JSON equal but for timings. Then a
changed parameter must rerun the affected rules only, and nothing may have been
written outside the output and work folders, nor into the input.

Registration runs with a coarse setting (config file below) to keep the test short.
Until the detector's weights ship (cmb/detect/weights/default), the runs stop after
registration; once they exist, they go on to detection and localization (the
candidate and detection TSVs).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
from test_robustness import _checksums, read_only_tree  # noqa: I001 - tests/ is on sys.path
from test_workflow import REPO, job_counts

pytestmark = pytest.mark.slow

WEIGHTS = REPO / "cmb" / "detect" / "weights" / "default" / "model.safetensors"
FAST = "register:\n  step_mm: 4\n  syn_iterations: [10, 0, 0]\nmars:\n  resolution_mm: 2\n"


def _env(base: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TMPDIR"] = str(base / "tmp")  # every temporary file of the run lands here
    return env


def _cmd(ctx: dict, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(ctx["wd"]),
        "--configfile",
        str(ctx["cfg"]),
        "--config",
        f"bids_dir={ctx['bids']}",
        f"output_dir={ctx['out']}",
        *args,
    ]


def _snakemake(ctx: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cmd(ctx, *args),
        capture_output=True,
        text=True,
        env=_env(ctx["base"]),
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def _targets(ctx: dict) -> list[str]:
    """The subject's stages up to registration; with the detector's weights, up to the
    detections table (localize_cmb). The reports are left out to keep the test short."""
    rules = ["ingest_swi_phase", "preprocess_swi_phase", "register_to_mni"]
    if WEIGHTS.is_file():
        rules += ["detect_cmb", "localize_cmb"]
    return [f"{ctx['out']}/status/{rule}/sub-01/sub-01_status.json" for rule in rules]


def _run(ctx: dict, *extra: str) -> subprocess.CompletedProcess:
    proc = _snakemake(
        ctx,
        "--profile",
        str(REPO / "profiles" / "local"),
        "--cores",
        "2",
        *extra,
        "--",
        *_targets(ctx),
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc


def _kill_session(sid: int) -> None:
    """SIGKILL every process of the session the run was started in (only ours)."""
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.info["pid"]) == sid:
                os.kill(p.info["pid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass


def _run_and_kill_mid_write(ctx: dict, timeout: float = 300) -> str:
    """Start the run; SIGKILL all its processes once a job is writing an output (its
    temporary file exists). The preprocessed phase is the target: the job has then
    written its first outputs but not all. Returns the name of the file being written."""
    proc = subprocess.Popen(
        _cmd(
            ctx, "--profile", str(REPO / "profiles" / "local"), "--cores", "2", "--", *_targets(ctx)
        ),
        env=_env(ctx["base"]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    sub = ctx["out"] / "sub-01"
    preprocessed = ctx["out"] / "status" / "preprocess_swi_phase" / "sub-01" / "sub-01_status.json"
    victim = None
    t0 = time.monotonic()
    try:
        while victim is None and proc.poll() is None and time.monotonic() - t0 < timeout:
            writing = [p for p in sub.rglob(".*.tmp*") if "ingested" not in p.name]
            victim = next((p for p in writing if "part-phase_desc-preproc" in p.name), None)
            if victim is None and writing and preprocessed.exists():  # missed it: any later write
                victim = writing[0]
            time.sleep(0.002)
    finally:
        _kill_session(proc.pid)
        proc.wait(timeout=60)
    assert victim is not None, "no job was caught writing (the run ended or timed out first)"
    return victim.name


def _synth(out: Path) -> Path:
    """One ``tiny`` subject with magnitude and phase, no T1w."""
    from cmb.cli import main as cmb_main

    assert (
        cmb_main(
            ["synth", "--out", str(out), "--n-subjects", "1", "--seed", "11", "--preset", "tiny"]
        )
        == 0
    )
    return out


def _strip_times(obj):
    """JSON without timings, and without the git commit (other work may land between runs)."""
    if isinstance(obj, dict):
        return {
            k: _strip_times(v)
            for k, v in obj.items()
            if k not in ("time", "timings", "seconds", "commit") and not k.endswith("_s")
        }
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def _unreadable(out: Path) -> list[str]:
    """Non-empty result files under their final names that do not read in full.

    An atomic write's temporary file (``.<name>.<random>.tmp<suffix>``) is not under a
    final name: a kill mid-write leaves it behind, and the rerun removes it.
    """
    bad = []
    for rel, p in _results(out).items():
        if p.name.startswith(".") and ".tmp" in p.name:
            continue
        if not p.stat().st_size:
            continue  # a placeholder of a failed stage (none here) or a marker
        try:
            if rel.endswith(".nii.gz"):
                np.asanyarray(nib.load(p).dataobj)
            elif rel.endswith(".json"):
                json.loads(p.read_text())
        except Exception:  # noqa: BLE001 - any failure to read is a partial file
            bad.append(rel)
    return bad


def _results(out: Path) -> dict[str, Path]:
    skip = ("logs", "benchmarks")
    return {
        str(p.relative_to(out)): p
        for p in out.rglob("*")
        if p.is_file() and p.relative_to(out).parts[0] not in skip
    }


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    (base / "tmp").mkdir()
    bids = _synth(base / "raw; $(touch PWNED) `touch PWNED` 'q\" ü")
    cfg = base / "fast.yaml"
    cfg.write_text(FAST)
    if WEIGHTS.is_file():  # a copy of the model, so that the test can change it
        shutil.copytree(WEIGHTS.parent, base / "model")
        cfg.write_text(
            FAST + f"detection:\n  model_dir: {json.dumps(str(base / 'model'))}\n  use_gpu: false\n"
        )
    ctx = {
        "base": base,
        "bids": bids,
        "cfg": cfg,
        "wd": base / "wd",
        "out": base / "deriv $(touch PWNED)" / "cmb",
    }
    before_input = _checksums(bids)
    before_base = {p for p in base.rglob("*")}
    with read_only_tree(bids):
        _run(ctx)  # A
        ctx["tmp_after_a"] = sorted(str(p) for p in (base / "tmp").rglob("*"))
        ctx["partials_after_a"] = sorted(str(p) for p in ctx["out"].rglob(".*.tmp*"))
        ctx["A"] = ctx["out"].with_name("cmb-A")
        ctx["out"].rename(ctx["A"])
        ctx["victim"] = _run_and_kill_mid_write(ctx)  # B, killed
        ctx["unreadable_after_kill"] = _unreadable(ctx["out"])
        ctx["dry_after_kill"] = _snakemake(ctx, "-n", "--", *_targets(ctx))
        ctx["unlock"] = _snakemake(
            ctx, "--unlock"
        )  # a killed run leaves its lock, as after a power cut
        _run(ctx)  # B, rerun
    ctx["input_unchanged"] = _checksums(bids) == before_input
    allowed = (ctx["out"].parent, ctx["wd"], base / "tmp", cfg, base / "model")
    ctx["written_outside"] = sorted(
        str(p)
        for p in set(base.rglob("*")) - before_base
        if not any(p == a or a in p.parents for a in allowed)
    )
    return ctx


def test_no_injection_and_nothing_written_outside_the_output(faults):
    assert not list(faults["base"].rglob("PWNED")) and not (REPO / "PWNED").exists()
    assert faults["input_unchanged"]
    assert faults["written_outside"] == []
    assert faults["tmp_after_a"] == []  # no leaked temporary files or folders
    assert faults["partials_after_a"] == []


def test_killed_run_leaves_no_partial_file_under_a_final_name(faults):
    assert "preproc" in faults["victim"] or "xfm" in faults["victim"] or "mars" in faults["victim"]
    assert faults["unreadable_after_kill"] == []  # atomic writes: complete or absent
    # the killed job's finished outputs are not taken as done: Snakemake marks them incomplete
    text = faults["dry_after_kill"].stdout + faults["dry_after_kill"].stderr
    assert faults["dry_after_kill"].returncode != 0 and "incomplete" in text, text[-3000:]
    if "part-phase_desc-preproc" in faults["victim"]:
        assert "sub-01_part-mag_desc-preproc_swi.nii.gz" in text, text[-3000:]


def test_rerun_after_kill_equals_uninterrupted_run(faults):
    a, b = _results(faults["A"]), _results(faults["out"])
    assert sorted(a) == sorted(b)
    assert not [k for k in b if Path(k).name.startswith(".")]  # no leftover temporary files
    for rel in sorted(a):
        pa, pb = a[rel], b[rel]
        if rel.endswith((".csv", ".tsv", ".nii.gz", ".mat")):
            assert pa.read_bytes() == pb.read_bytes(), rel
        elif rel.endswith(".json") and pa.stat().st_size:
            ja, jb = (
                json.loads(p.read_text().replace(str(faults["A"]), str(faults["out"])))
                for p in (pa, pb)
            )
            assert _strip_times(ja) == _strip_times(jb), rel
    mag = nib.load(b["sub-01/anat/sub-01_part-mag_desc-preproc_swi.nii.gz"])
    assert np.isfinite(np.asanyarray(mag.dataobj)).all()


def test_second_run_has_nothing_to_do(faults):
    proc = _snakemake(faults, "-n", "--", *_targets(faults))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Nothing to be done" in text, text[-3000:]


def test_changed_parameter_reruns_the_affected_rules_only(faults):
    changed = dict(faults, cfg=faults["base"] / "changed.yaml")
    changed["cfg"].write_text(FAST + "preprocess:\n  highpass_sigma_mm: 3.0\n")
    proc = _snakemake(changed, "-n", "--", *_targets(faults))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    counts = job_counts(text)
    assert counts["preprocess_swi_phase"] == 1 and counts["register_to_mni"] == 1
    assert "ingest_swi_phase" not in counts and "build_mars_map" not in counts
    assert "Params have changed since last execution" in text
    changes = _snakemake(changed, "--list-changes", "params", "--", *_targets(faults))
    listed = changes.stdout.split()
    assert any(p.endswith("sub-01_part-mag_desc-preproc_swi.nii.gz") for p in listed), (
        changes.stdout[-3000:]
    )
    assert not any("desc-ingested" in p for p in listed)


def test_hostile_file_names_reach_the_stage_as_one_argument(tmp_path):
    """File names with quotes, ``$(...)``, backticks and ``;`` are passed, never run."""
    bids = tmp_path / "bids"
    hostile = "sub-01_acq-x;$(touch PWNED)`touch PWNED`'q\"_T2starw.nii.gz"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "sub-01" / "anat" / hostile).write_bytes(b"")
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    out = tmp_path / "out"
    ctx = {"base": tmp_path, "bids": bids, "cfg": tmp_path / "c.yaml", "wd": tmp_path, "out": out}
    ctx["cfg"].write_text("{}\n")
    (tmp_path / "tmp").mkdir()
    status = out / "status" / "ingest_swi" / "sub-01" / "sub-01_status.json"
    dry = _snakemake(ctx, "-n", "-p", "--", str(status))
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-3000:]
    (cmd,) = {
        line.split("Shell command: ", 1)[1]
        for line in (dry.stdout + dry.stderr).splitlines()
        if line.startswith("Shell command: ") and "cmb.ingest run" in line
    }
    argv = shlex.split(cmd.split("&>")[0])
    assert argv[argv.index("--mag") + 1] == str(bids / "sub-01" / "anat" / hostile)
    proc = _snakemake(ctx, "--cores", "1", "--", str(status))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    record = json.loads(status.read_text())
    assert (
        record["status"] == "failed"
        and record["message"] == f"{bids / 'sub-01' / 'anat' / hostile}: empty file (0 bytes)"
    )
    assert not list(tmp_path.rglob("PWNED")) and not (REPO / "PWNED").exists()


def test_changed_model_reruns_detection(faults):
    if not WEIGHTS.is_file():
        pytest.skip("the detector's weights (cmb/detect/weights/default) are not there yet")
    card = faults["base"] / "model" / "model_card.json"
    old, stat = card.read_bytes(), card.stat()
    try:
        card.write_bytes(old + b"\n")  # a new model: its files are inputs of detect_cmb
        proc = _snakemake(faults, "-n", "--", *_targets(faults))
    finally:
        card.write_bytes(old)
        os.utime(card, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    counts = job_counts(text)
    assert counts["detect_cmb"] == 1 and "preprocess_swi_phase" not in counts, text[-3000:]
