"""The container route without a container: ``cmb run``'s checks of the bind mounts, and
the comparer that .ci/container_test.sh uses to hold the image's outputs against the
bare-metal run's (.ci/compare_exact.py). The image itself is built and run by
.ci/container_test.sh (a CI stage of its own: docs/cluster.md, "Containers")."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cmb.workflow_run import check_paths, config_items, snakemake_command

REPO = Path(__file__).resolve().parents[1]


def _compare_module():
    spec = importlib.util.spec_from_file_location(
        "compare_exact", REPO / ".ci" / "compare_exact.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


compare_exact = _compare_module()


# --- cmb run: the bind mounts ------------------------------------------------------------------


def test_a_missing_input_folder_is_named_with_the_bind_mount_to_add(tmp_path):
    problems = check_paths(
        {"bids_dir": str(tmp_path / "bids"), "output_dir": str(tmp_path / "out")}
    )
    assert len(problems) == 1
    assert problems[0].startswith(f"bids_dir {tmp_path / 'bids'}: no such folder")
    assert f"-v HOST_DIR:{tmp_path / 'bids'}:ro" in problems[0]


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into read-only folders (the container test checks it)"
)
def test_an_unwritable_output_and_its_default_work_folder_are_named(tmp_path):
    (tmp_path / "bids").mkdir()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        problems = check_paths({"bids_dir": str(tmp_path / "bids"), "output_dir": str(ro / "out")})
    finally:
        ro.chmod(0o755)
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"output_dir {ro / 'out'}: {ro} is read-only here")
    assert problems[1].startswith(
        f"work_dir (empty, so <output_dir>-work) {ro / 'out'}-work: {ro} is read-only"
    )
    assert "set work_dir=" in problems[1]


def test_the_default_work_folder_is_checked_only_where_nothing_else_sets_it(tmp_path):
    (tmp_path / "bids").mkdir()
    (tmp_path / "file").write_text("x")
    items = {"bids_dir": str(tmp_path / "bids"), "output_dir": str(tmp_path / "out")}
    assert check_paths(items) == []
    # <output_dir>-work would sit under a file: not a folder
    items = {"bids_dir": str(tmp_path / "bids"), "output_dir": str(tmp_path / "file" / "out")}
    problems = check_paths(items)
    assert [p.split(" ", 1)[0] for p in problems] == ["output_dir", "work_dir"]
    assert "not a folder" in problems[1]
    assert len(check_paths(items, default_work_dir=False)) == 1
    assert len(check_paths({**items, "work_dir": str(tmp_path / "w")})) == 1


def test_cmb_run_stops_before_snakemake_and_names_the_path(tmp_path):
    """The real entry point (the image's): exit 2 and the path, not a Snakemake traceback."""
    missing = tmp_path / "not-bound"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmb.cli",
            "run",
            "--config",
            f"bids_dir={missing}",
            f"output_dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert f"cmb run: error: bids_dir {missing}: no such folder" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_config_items_and_the_snakemake_line():
    assert config_items(["--config", "bids_dir=/b", "output_dir=/o", "-n"]) == {
        "bids_dir": "/b",
        "output_dir": "/o",
    }
    cmd = snakemake_command(["--profile", "slurm", "-n"], Path("/w"))
    assert cmd[1:] == ["-m", "snakemake", "--snakefile", "/w/Snakefile", "--profile", "slurm", "-n"]
    cmd = snakemake_command(["--profile", "slurm"], REPO)
    assert cmd[-1] == str(REPO / "profiles" / "slurm")


# --- .ci/compare_exact.py ----------------------------------------------------------------------


def _tree(
    root: Path,
    out: str,
    bids: str,
    *,
    python="3.11.7",
    date="2026-12-07T02:10:15",
    value=3,
    voxel=b"\x01\x02",
) -> Path:
    """A small output folder that names its own paths, versions and times as a run does."""
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "sub-01" / "figures").mkdir()
    (root / "logs").mkdir()
    side = {
        "Provenance": {
            "software": {"python": python},
            "git": {"commit": None},
            "cmb_version": "0.1.0",
            "inputs": {"magnitude": [{"path": f"{bids}/sub-01/swi/mag.nii.gz", "sha256": "ab"}]},
            "config_sha256": out,
        },
        "Summary": {"n_cmb": value},
        "timings": {"total_s": 1.5},
        "model_dir": out + "/weights",
        "outputs": {"mask": f"{out}/sub-01/anat/mask.nii.gz"},
    }
    (root / "sub-01" / "anat" / "sub-01_desc-cmb_detections.json").write_text(
        json.dumps(side, indent=2)
    )
    (root / "sub-01" / "anat" / "sub-01_desc-cmb_detections.tsv").write_text(
        f"cmb_id\tn\n1\t{value}\n"
    )
    (root / "sub-01" / "anat" / "mask.nii.gz").write_bytes(gzip.compress(voxel, mtime=0))
    (root / "sub-01" / "figures" / "qc.svg").write_text(
        f"<svg><dc:date>{date}</dc:date><dc:title>Matplotlib v3.11.2, https://matplotlib.org/</dc:title>"
        "<path d='M 0 1'/></svg>"
    )
    (root / "sub-01" / "sub-01_report.html").write_text(
        f"<table><tr><th>Provenance.software.python</th><td>{python}</td></tr>"
        f"<tr><th>Provenance.inputs.magnitude[0].path</th><td>{bids}/sub-01/swi/mag.nii.gz</td></tr>"
        f"<tr><th>Summary.n_cmb</th><td>{value}</td></tr></table>"
    )
    (root / "logs" / "run.log").write_text(f"started {date}\n")
    return root


def _two_trees(tmp_path, **b_kwargs):
    a = _tree(tmp_path / "host" / "out", str(tmp_path / "host" / "out"), "/host/bids")
    b = _tree(
        tmp_path / "ctr" / "out",
        str(tmp_path / "ctr" / "out"),
        "/data/bids",
        **{"python": "3.11.2", "date": "2026-12-07T03:00:00", **b_kwargs},
    )
    return a, b, ["--paths", "/host/bids=/data/bids"]


def test_runs_that_differ_in_provenance_only_are_equal(tmp_path, capsys):
    a, b, paths = _two_trees(tmp_path)
    assert compare_exact.main([str(a), str(b), *paths]) == 0
    out = capsys.readouterr().out
    assert (
        "compared 5 files" in out and "2 identical bytes, 3 identical apart from provenance" in out
    )


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            {"value": 4},
            [
                "sub-01_report.html",
                "sub-01_desc-cmb_detections.json",
                "sub-01_desc-cmb_detections.tsv",
            ],
        ),
        ({"voxel": b"\x01\x03"}, ["mask.nii.gz"]),
    ],
)
def test_a_changed_result_is_a_difference(tmp_path, capsys, change, expected):
    a, b, paths = _two_trees(tmp_path, **change)
    assert compare_exact.main([str(a), str(b), *paths]) == 1
    diffs = [line for line in capsys.readouterr().out.splitlines() if "DIFF" in line]
    assert sorted(d.split()[2].rsplit("/", 1)[-1] for d in diffs) == sorted(expected), diffs


def test_a_path_that_is_not_one_of_the_runs_roots_is_a_difference(tmp_path, capsys):
    a, b, _ = _two_trees(tmp_path)
    assert (
        compare_exact.main([str(a), str(b)]) == 1
    )  # the BIDS roots not declared: the input paths differ
    assert "DIFF differs: sub-01/sub-01_report.html" in capsys.readouterr().out


def test_a_missing_file_and_an_empty_run_are_failures(tmp_path, capsys):
    a, b, paths = _two_trees(tmp_path)
    (b / "sub-01" / "figures" / "qc.svg").unlink()
    assert compare_exact.main([str(a), str(b), *paths]) == 1
    assert f"DIFF only in {a}: sub-01/figures/qc.svg" in capsys.readouterr().out
    (tmp_path / "e1").mkdir()
    (tmp_path / "e2").mkdir()
    assert compare_exact.main([str(tmp_path / "e1"), str(tmp_path / "e2")]) == 1


def test_an_ignored_key_is_ignored_only_as_a_key():
    doc = {
        "Summary": {"time_to_peak": 1},
        "time": "x",
        "timings": {"a": 1},
        "seconds": 2,
        "GeneratedBy": [{"Name": "cmb", "Version": "1"}],
        "Version": "kept",
    }
    masked = compare_exact.mask_json(doc)
    assert masked == {
        "Summary": {"time_to_peak": 1},
        "time": "<provenance>",
        "timings": "<provenance>",
        "seconds": "<provenance>",
        "GeneratedBy": [{"Name": "cmb", "Version": "<provenance>"}],
        "Version": "kept",
    }
