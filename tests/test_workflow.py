"""Workflow tests: config validation, dry runs over BIDS fixtures, real Snakemake runs.

The dry runs use the trees of empty files in tests/data/ (planning reads only file
names and JSON sidecars). The real runs generate a ``tiny`` synthetic cohort with
``cmb synth`` and run the whole workflow on it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_review import (
    LOCAL_SCHEMES,
    gray_pixels,
    needs_browser,
    open_viewer_offline,
    sync_playwright,
)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


# --------------------------------------------------------------------------- helpers


def run_snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the workflow's Snakefile in ``workdir`` with this interpreter's environment."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        *args,
    ]
    return subprocess.run(
        cmd,
        check=False,
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def dry_run(bids: Path, tmp_path: Path, *extra: str) -> tuple[Counter, str]:
    """``snakemake -n -p``; returns the job count per rule and the printed text."""
    proc = run_snakemake(
        tmp_path,
        "-n",
        "-p",
        "--config",
        f"bids_dir={bids}",
        f"output_dir={tmp_path / 'out'}",
        *extra,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-5000:]
    return job_counts(text), text


def job_counts(text: str) -> Counter:
    """Rule -> job count, from the "Job stats" table of a (dry) run."""
    counts: Counter = Counter()
    if "Job stats:" not in text:
        return counts
    table = text[text.index("Job stats:") :].splitlines()[3:]
    for line in table:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def shell_commands(text: str, marker: str) -> list[str]:
    """The distinct shell commands of a ``-p`` dry run that contain ``marker``."""
    cmds = {
        line.split("Shell command: ", 1)[1]
        for line in text.splitlines()
        if line.startswith("Shell command: ") and marker in line
    }
    return sorted(cmds)


def expected_jobs(plain: int = 0, phase: int = 0, t1w: int = 0) -> Counter:
    """Jobs of a cohort with ``plain`` subjects/sessions without phase, ``phase`` with
    phase, ``t1w`` of them with a T1w (one per subject/session and stage)."""
    n = plain + phase
    jobs = Counter(
        {
            "ingest_swi": plain,
            "ingest_swi_phase": phase,
            "ingest_t1w": t1w,
            "preprocess_swi": plain,
            "preprocess_swi_phase": phase,
            "register_to_mni": n,
            "plot_qc": n,
            "detect_cmb": n,
            "localize_cmb": n,
            "report_subject": n,
            "collect_cohort_tables": 1,
            "report_cohort": 1,
            "build_mars_map": 1,
            "write_dataset_description": 1,
            "install_viewer": 1,
            "collect_failures": 1,
            "all": 1,
        }
    )
    return +jobs  # drop zero counts


def wrong_config(tmp_path: Path, *config: str) -> str:
    proc = run_snakemake(
        tmp_path,
        "-n",
        "--config",
        f"bids_dir={DATA / 'bids_t2starw'}",
        f"output_dir={tmp_path / 'out'}",
        *config,
    )
    assert proc.returncode != 0
    return proc.stdout + proc.stderr


# --------------------------------------------------------------------------- dry runs


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ("bids_t2starw", expected_jobs(plain=2, t1w=1)),
        ("bids_anat_swi", expected_jobs(plain=2, t1w=2)),
        ("bids_swi_swi", expected_jobs(plain=1, phase=1)),
        ("bids_swi_gre", expected_jobs(phase=2, t1w=2)),
        ("bids_megre", expected_jobs(plain=1, phase=1)),
        ("bids_sessions", expected_jobs(plain=3, phase=1, t1w=3)),
        ("bids_mixed_sessions", expected_jobs(plain=2)),
    ],
)
def test_dry_run_jobs_per_naming_variant(dataset, expected, tmp_path):
    counts, _ = dry_run(DATA / dataset, tmp_path)
    assert counts == expected


def test_dry_run_megre_passes_echoes_in_order_with_times(tmp_path):
    _, text = dry_run(DATA / "bids_megre", tmp_path)
    (cmd,) = shell_commands(text, "cmb.ingest run --subject 01 ")
    mags = re.findall(r"anat/sub-01_echo-(\d+)_part-mag_MEGRE", cmd)
    phases = re.findall(r"anat/sub-01_echo-(\d+)_part-phase_MEGRE", cmd)
    assert mags == ["1", "2", "3"] and phases == ["1", "2", "3"]
    assert "--echo-times 0.005 0.015 0.025" in cmd
    assert "--kind megre" in cmd


def test_dry_run_sessions_runs_and_subject_level_t1w(tmp_path):
    _, text = dry_run(DATA / "bids_sessions", tmp_path)
    out = tmp_path / "out"
    # session paths, the latest run, the subject-level T1w for both sessions of sub-01
    assert f"{out}/sub-01/ses-1/anat/sub-01_ses-1_desc-ingested_swi.nii.gz" in text
    assert "sub-01_ses-1_run-2_T2starw.nii.gz" in text
    assert f"{out}/sub-01/ses-2/anat/sub-01_ses-2_part-phase_desc-ingested_swi.nii.gz" in text
    t1w_cmds = [
        c
        for c in shell_commands(text, "cmb.ingest run --subject 01 ")
        if "_desc-ingested_T1w.nii.gz" in c
    ]
    assert len(t1w_cmds) == 2 and all("sub-01/anat/sub-01_T1w.nii.gz" in c for c in t1w_cmds)


def test_dry_run_mixed_sessions_keeps_both_layouts(tmp_path):
    _, text = dry_run(DATA / "bids_mixed_sessions", tmp_path)
    out = tmp_path / "out"
    assert f"{out}/sub-01/ses-1/anat/sub-01_ses-1_desc-ingested_swi.nii.gz" in text
    assert f"{out}/sub-02/anat/sub-02_desc-ingested_swi.nii.gz" in text


def test_dry_run_preference_from_config(tmp_path):
    # gre_phase left out: the GRE subjects have no usable input and fail visibly at ingest
    counts, text = dry_run(DATA / "bids_swi_gre", tmp_path, "ingest={preference: [t2starw]}")
    assert counts["ingest_swi"] == 2 and "ingest_swi_phase" not in counts
    assert text.count("--kind none") == 2


def test_dry_run_register_gets_the_sessions_own_parcellation(tmp_path):
    """mars.parcellation_dir: a subject with an fMRIPrep aparcaseg gets it as a registration input; one without
    gets the reason, and the atlas route (docs/mars.md)."""
    fmriprep = tmp_path / "derivatives" / "fmriprep"
    parc = fmriprep / "sub-01" / "anat" / "sub-01_desc-aparcaseg_dseg.nii.gz"
    parc.parent.mkdir(parents=True)
    parc.write_bytes(b"")
    _, text = dry_run(DATA / "bids_anat_swi", tmp_path, f"mars={{parcellation_dir: {fmriprep}}}")
    (one,) = shell_commands(text, "cmb.registration --image " + str(tmp_path / "out" / "sub-01"))
    (two,) = shell_commands(text, "cmb.registration --image " + str(tmp_path / "out" / "sub-02"))
    assert f"--parcellation {parc}" in one and "--parcellation-refused" not in one
    assert f'"parcellation_dir":"{fmriprep}"' in one and '"parcellation_min_dice":0.8' in one
    assert (
        "--parcellation-refused 'no parcellation of sub-02 under" in two
        and "--parcellation " not in two
    )
    _, plain = dry_run(DATA / "bids_anat_swi", tmp_path / "plain")
    assert "--parcellation" not in plain


def test_dry_run_paths_with_spaces_are_quoted(tmp_path):
    bids = tmp_path / "my data (v1)"
    shutil.copytree(DATA / "bids_anat_swi", bids)
    counts, text = dry_run(bids, tmp_path)
    assert counts["ingest_swi"] == 2
    assert f"'{bids}/sub-01/anat/sub-01_swi.nii.gz'" in text


# --------------------------------------------------------------------------- config


def test_participant_label_02_from_config_file_stays_a_string(tmp_path):
    # sub-02 and sub-2 both exist: an unquoted YAML 02 must select sub-02 only
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"bids_dir: {DATA / 'bids_sessions'}\noutput_dir: {tmp_path / 'out'}\n"
        "participant_label: 02\n"
    )
    proc = run_snakemake(tmp_path, "-n", "--configfile", str(cfg))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "subject=02," in text and "subject=2," not in text
    assert job_counts(text)["ingest_swi"] == 1


def test_schema_fills_in_defaults(tmp_path):
    # only the two required keys; the workflow's own config file is left out
    cfg = tmp_path / "minimal.yaml"
    cfg.write_text(f"bids_dir: {DATA / 'bids_swi_gre'}\noutput_dir: {tmp_path / 'out'}\n")
    proc = run_snakemake(
        tmp_path, "-n", "-p", "--configfile", str(cfg), "--replace-workflow-config"
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    for default in (  # the stages get the schema's defaults in their config sections
        '"phase_units":"auto"',
        '"n4_spacing_mm":4.0',
        '"paramagnetic_phase":"auto"',
        '"step_mm":2',
        '"juxtacortical_mm":5.0',
    ):
        assert default in text, default
    assert (tmp_path / "out-work" / "pybids").is_dir()  # default pybids_db_dir


def test_participant_label_02_on_the_command_line(tmp_path):
    counts, text = dry_run(DATA / "bids_t2starw", tmp_path, "participant_label=02")
    assert counts["ingest_swi"] == 1 and "subject=02" in text and "subject=01" not in text


def test_ambiguous_integer_label_asks_for_quotes(tmp_path):
    proc = run_snakemake(
        tmp_path,
        "-n",
        "--config",
        f"bids_dir={DATA / 'bids_sessions'}",
        f"output_dir={tmp_path / 'out'}",
        "participant_label=02",
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "matches several subjects" in text and "quote" in text


def test_exclude_participant_label(tmp_path):
    counts, text = dry_run(DATA / "bids_t2starw", tmp_path, "exclude_participant_label=[sub-01]")
    assert counts["ingest_swi"] == 1 and "subject=01" not in text


def test_nested_config_on_the_command_line_is_typed_by_the_schema(tmp_path):
    # Snakemake hands nested --config values over as strings ("false", "3")
    _, text = dry_run(
        DATA / "bids_swi_gre",
        tmp_path,
        "register={syn: false, step_mm: 3}",
        "detection={use_gpu: false}",
    )
    assert '"step_mm":3' in text and '"syn":false' in text
    assert "gpu=1" not in text
    bad = wrong_config(tmp_path, "register={syn: maybe}")
    assert (
        "invalid configuration (register.syn)" in bad and "'maybe' is not of type 'boolean'" in bad
    )


def test_bad_config_value_gives_a_clear_error(tmp_path):
    text = wrong_config(tmp_path, "ingest={preference: [swi, foo]}")
    assert "invalid configuration (ingest.preference.1)" in text and "'foo' is not one of" in text


def test_unknown_config_key_is_an_error(tmp_path):
    text = wrong_config(tmp_path, "participant_labels=01")
    assert "invalid configuration" in text and "participant_labels" in text


def test_unknown_participant_is_an_error(tmp_path):
    text = wrong_config(tmp_path, "participant_label=[99]")
    assert "cannot plan the inputs" in text and "99" in text


def test_missing_bids_dir_is_an_error(tmp_path):
    proc = run_snakemake(
        tmp_path,
        "-n",
        "--config",
        f"bids_dir={tmp_path / 'nowhere'}",
        f"output_dir={tmp_path / 'out'}",
    )
    assert proc.returncode != 0 and "BIDS folder not found" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- real runs


def _synth(out: Path, n: int, seed: int) -> Path:
    from cmb.cli import main as cmb_main

    assert (
        cmb_main(
            [
                "synth",
                "--out",
                str(out),
                "--n-subjects",
                str(n),
                "--seed",
                str(seed),
                "--preset",
                "tiny",
                "--t1w",
            ]
        )
        == 0
    )
    return out


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def cohort_run(tmp_path_factory):
    """One real run on a tiny cohort: sub-01 and sub-02 intact, sub-03's magnitude truncated.

    The folders have spaces and shell metacharacters in their names: every path must
    reach the stage CLIs quoted (nothing here may run as a command).
    """
    base = tmp_path_factory.mktemp("cohort")
    bids = _synth(base / "raw data; $(touch PWNED) (v1)", 3, seed=7)
    mags = [
        p
        for p in sorted((bids / "sub-03").rglob("*.nii.gz"))
        if "T1w" not in p.name and "phase" not in p.name
    ]
    _truncate(mags[0])
    out = base / "deriv atives" / "cmb"
    proc = run_snakemake(
        base,
        "--profile",
        str(REPO / "profiles" / "local"),
        "--cores",
        "2",
        "--config",
        f"bids_dir={bids}",
        f"output_dir={out}",
        timeout=1200,
    )
    return {"base": base, "bids": bids, "out": out, "proc": proc, "corrupt": mags[0]}


def _anat(out: Path, sub: str) -> Path:
    return out / f"sub-{sub}" / "anat"


@pytest.mark.slow
def test_end_to_end_outputs(cohort_run):
    proc, out = cohort_run["proc"], cohort_run["out"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert not list(cohort_run["base"].rglob("PWNED")) and not (REPO / "PWNED").exists()
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "cmb"
    for sub in ("01", "02"):
        anat = _anat(out, sub)
        for name in expected_subject_files(sub, phase=True, t1w=True):
            path = anat / name
            assert path.is_file() and path.stat().st_size > 0, path
            if name.endswith(".nii.gz"):
                assert np.isfinite(np.asanyarray(nib.load(path).dataobj)).all(), path
        report = json.loads((anat / f"sub-{sub}_part-mag_desc-ingested_swi.json").read_text())
        assert report["participant_id"] == f"sub-{sub}" and report["phase_units"]["units"]
        mars = nib.load(anat / f"sub-{sub}_desc-mars_dseg.nii.gz")
        image = nib.load(anat / f"sub-{sub}_part-mag_desc-preproc_swi.nii.gz")
        assert mars.shape == image.shape and np.allclose(mars.affine, image.affine, atol=1e-4)
        labels = set(np.unique(np.asanyarray(mars.dataobj)).tolist())
        with open(anat / f"sub-{sub}_desc-mars_dseg.tsv", newline="") as f:
            table = {int(r["index"]): r for r in csv.DictReader(f, delimiter="\t")}
        assert labels <= set(table)
        categories = {table[v]["mars_category"] for v in labels}
        assert {"lobar", "deep", "infratentorial"} <= categories
        assert {table[v]["hemisphere"] for v in labels} >= {"L", "R"}
        quality = json.loads(
            (anat / f"sub-{sub}_from-SWI_to-MNI152NLin2009cAsym_mode-image_xfm.json").read_text()
        )
        assert quality["quality"]["nmi"] > 1.0
        # the default atlas route: the scan's own cortex/white-matter border (mars.native_tissue)
        tissue = quality["native_tissue"]
        assert tissue["method"].startswith("ANTs Atropos")
        assert tissue["gm_ml"] > 0 and tissue["wm_ml"] > 0
        for name in ("brainmask", "registration"):
            figure = out / f"sub-{sub}" / "figures" / f"sub-{sub}_desc-{name}_swi.svg"
            assert figure.read_text().lstrip().startswith(("<?xml", "<svg")), figure
        for stage in ("plot_brain_mask", "plot_registration"):
            status = out / "status" / stage / f"sub-{sub}" / f"sub-{sub}_status.json"
            assert json.loads(status.read_text())["status"] == "ok"
        for rule in ("ingest_swi_phase", "ingest_t1w", "preprocess_swi_phase", "register_to_mni"):
            status = out / "status" / rule / f"sub-{sub}" / f"sub-{sub}_status.json"
            assert json.loads(status.read_text())["status"] == "ok"
            assert (out / "logs" / rule / f"sub-{sub}" / f"sub-{sub}_log.txt").is_file()
            assert (out / "benchmarks" / rule / f"sub-{sub}" / f"sub-{sub}_benchmark.tsv").is_file()


def expected_subject_files(sub: str, phase: bool, t1w: bool) -> list[str]:
    """Files every completed subject has in its anat/ folder."""
    p = f"sub-{sub}"
    files = (
        [
            f"{p}_part-mag_desc-ingested_swi.nii.gz",
            f"{p}_part-phase_desc-ingested_swi.nii.gz",
            f"{p}_part-mag_desc-ingested_swi.json",
        ]
        if phase
        else [f"{p}_desc-ingested_swi.nii.gz", f"{p}_desc-ingested_swi.json"]
    )
    files += (
        [
            f"{p}_part-mag_desc-preproc_swi.nii.gz",
            f"{p}_part-mag_desc-brain_mask.nii.gz",
            f"{p}_part-phase_desc-preproc_swi.nii.gz",
            f"{p}_part-mag_desc-preproc_swi.json",
        ]
        if phase
        else [
            f"{p}_desc-preproc_swi.nii.gz",
            f"{p}_desc-brain_mask.nii.gz",
            f"{p}_desc-preproc_swi.json",
        ]
    )
    mni = "MNI152NLin2009cAsym"
    files += [
        f"{p}_from-SWI_to-{mni}_mode-image_xfm.mat",
        f"{p}_from-SWI_to-{mni}_mode-image_xfm.nii.gz",
        f"{p}_from-{mni}_to-SWI_mode-image_xfm.mat",
        f"{p}_from-{mni}_to-SWI_mode-image_xfm.nii.gz",
        f"{p}_from-SWI_to-{mni}_mode-image_xfm.json",
        f"{p}_desc-mars_dseg.nii.gz",
        f"{p}_desc-mars_dseg.tsv",
    ]
    if t1w:
        files += [f"{p}_desc-ingested_T1w.nii.gz", f"{p}_from-SWI_to-T1w_mode-image_xfm.mat"]
    return files


@pytest.mark.slow
def test_corrupt_subject_is_reported_and_the_others_finish(cohort_run):
    proc, out = cohort_run["proc"], cohort_run["out"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    with open(out / "failures.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["participant_id"] for r in rows} == {"sub-03"}
    first = next(r for r in rows if r["stage"] == "ingest")
    assert cohort_run["corrupt"].name in first["message"] and "truncated" in first["message"]
    assert first["error_class"] == "InputDataError" and Path(first["log"]).is_file()
    assert all(
        r["message"].startswith("skipped: upstream stage ingest failed")
        for r in rows
        if r is not first and r["stage"] != "ingest"
    )


@pytest.mark.slow
def test_second_run_has_nothing_to_do(cohort_run):
    proc = run_snakemake(
        cohort_run["base"],
        "-n",
        "--config",
        f"bids_dir={cohort_run['bids']}",
        f"output_dir={cohort_run['out']}",
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Nothing to be done" in text, text[-3000:]


@pytest.mark.slow
def test_end_to_end_detections_cohort_tables_and_reports(cohort_run):
    """Localization, per-subject detections and maps, cohort CSVs and the QC pages (issue 5)."""
    import pandas as pd

    from cmb.tables import COUNT_COLUMNS, DETECTION_COLUMNS

    proc, out = cohort_run["proc"], cohort_run["out"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    rows = 0
    vessel_rows = {}
    for sub in ("01", "02"):
        anat = _anat(out, sub)
        det = pd.read_csv(
            anat / f"sub-{sub}_desc-cmb_detections.tsv", sep="\t", dtype=str, keep_default_na=False
        )
        assert list(det.columns) == DETECTION_COLUMNS
        rows += int((det["above_threshold"] == "true").sum())
        # phase_used comes through from the detect stage: false where the phase was hidden
        scored = json.loads((anat / f"sub-{sub}_desc-candidates_cmb.json").read_text())
        no_phase = scored["n_scored_without_phase"] if scored["phase_used"] else len(det)
        assert (
            set(det["phase_used"]) <= {"true", "false"}
            and (det["phase_used"] == "false").sum() == no_phase
        )
        # the vessel rule's rejections come through from the detect stage, with their measurements
        vessel = det[det["rejected_reason"] == "vessel"]
        assert (
            len(vessel) == scored["n_rejected_vessel"]
            and (vessel["vessel_length_mm"] != "n/a").all()
        )
        vessel_rows[sub] = len(vessel)
        ingested = nib.load(anat / f"sub-{sub}_part-mag_desc-ingested_swi.nii.gz")
        for name in ("label-CMB_dseg", "label-CMB_probseg"):
            img = nib.load(anat / f"sub-{sub}_{name}.nii.gz")
            assert img.shape == ingested.shape and np.allclose(
                img.affine, ingested.affine, atol=1e-4
            )
        counted = set(det.loc[det["is_cmb"] == "true", "cmb_id"].astype(int))
        labels = set(
            np.unique(
                np.asanyarray(nib.load(anat / f"sub-{sub}_label-CMB_dseg.nii.gz").dataobj)
            ).tolist()
        )
        assert labels - {0} == counted
        meta = json.loads((anat / f"sub-{sub}_desc-cmb_detections.json").read_text())
        prov = meta["Provenance"]
        assert (
            prov["config_sha256"]
            and prov["model_card_sha256"]
            and prov["inputs"]["magnitude"][0]["sha256"]
        )
        assert set(prov["software"]) >= {"ants", "torch", "snakemake"}
        page = (out / f"sub-{sub}" / f"sub-{sub}_report.html").read_text()
        assert "http://" not in page and "https://" not in page and 'id="detections"' in page
        for rule in ("localize_cmb", "report_subject"):
            status = out / "status" / rule / f"sub-{sub}" / f"sub-{sub}_status.json"
            assert json.loads(status.read_text())["status"] == "ok"
    counts = pd.read_csv(out / "cohort" / "cmb_counts.csv", dtype=str, keep_default_na=False)
    assert list(counts.columns) == COUNT_COLUMNS
    assert counts["participant_id"].tolist() == ["sub-01", "sub-02", "sub-03"]
    bad = counts.set_index("participant_id").loc["sub-03"]
    assert bad["status"] == "failed" and bad["failing_stage"] == "ingest" and bad["n_cmb"] == "n/a"
    assert bad["parcellation_source"] == "n/a"
    detections = pd.read_csv(
        out / "cohort" / "cmb_detections.csv", dtype=str, keep_default_na=False
    )
    assert len(detections) == rows
    for pid in ("sub-01", "sub-02"):
        row = counts.set_index("participant_id").loc[pid]
        mine = detections[(detections["participant_id"] == pid) & (detections["is_cmb"] == "true")]
        assert row["status"] == "ok" and int(row["n_cmb"]) == len(mine)
        assert row["parcellation_source"] == "atlas:MNI152NLin2009cAsym-DK"
        assert set(detections.loc[detections["participant_id"] == pid, "parcellation_source"]) <= {
            "atlas:MNI152NLin2009cAsym-DK"
        }
        assert int(row["n_rejected_vessel"]) == vessel_rows[pid[4:]]
    for name in (
        "cmb_counts.json",
        "cmb_detections.json",
        "cmb_ratings_template.tsv",
        "cmb_counts_long.csv",
        "figures/cmb_count_distribution.svg",
        "figures/cmb_region_counts.svg",
    ):
        assert (out / "cohort" / name).stat().st_size > 0, name
    html = (out / "cohort" / "cmb_report.html").read_text()
    for pid in ("sub-01", "sub-02", "sub-03"):
        assert f'href="../{pid}/{pid}_report.html"' in html
    assert "Failed scans (1)" in html and "truncated" in html


@needs_browser
def test_workflow_subject_page_draws_its_volume_offline(cohort_run):
    """The subject page the real workflow wrote opens from disk in headless chromium: the NiiVue
    viewer installed by the workflow draws the magnitude (non-blank canvas), every layer is read,
    and no request leaves the machine."""
    out = cohort_run["out"]
    assert cohort_run["proc"].returncode == 0
    page_file = out / "sub-01" / "sub-01_report.html"
    requests, errors = [], []
    with sync_playwright() as p:
        browser, page = open_viewer_offline(p, page_file, requests, errors)
        canvas = page.locator("#review-canvas")
        canvas.scroll_into_view_if_needed()
        pixels = gray_pixels(canvas.screenshot())
        browser.close()
    assert errors == [], errors
    assert (pixels > 30).mean() > 0.05 and pixels.std() > 20
    assert any(u.endswith("viewer/niivue.umd.js") for u in requests)
    assert all(u.startswith(LOCAL_SCHEMES) for u in requests), requests


@pytest.mark.slow
def test_a_new_verdict_file_reruns_the_cohort_tables_only(cohort_run):
    """A reviewer's verdict file under review.verdicts_dir (default <output_dir>/../cmb-verdicts) is an input of
    the cohort tables: the next run rewrites them with the review columns and reruns no detection."""
    import pandas as pd

    from cmb.verdicts import write_verdicts

    out = cohort_run["out"]
    assert cohort_run["proc"].returncode == 0
    det = pd.read_csv(_anat(out, "01") / "sub-01_desc-cmb_detections.tsv", sep="\t")
    kept = det[det["is_cmb"]].head(2)
    assert len(kept), "sub-01 has no counted CMB to review"
    verdicts = kept.assign(verdict="reject", reason="vein", candidate_id=kept["cmb_id"])
    vfile = write_verdicts(verdicts, out.parent / "cmb-verdicts", "sub-01", "alice")
    config = ("--config", f"bids_dir={cohort_run['bids']}", f"output_dir={out}")
    counts, text = job_counts_of(run_snakemake(cohort_run["base"], "-n", *config))
    assert counts == Counter({"collect_cohort_tables": 1, "report_cohort": 1, "all": 1}), text[
        -3000:
    ]
    proc = run_snakemake(
        cohort_run["base"], "--profile", str(REPO / "profiles" / "local"), "--cores", "2", *config
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    row = (
        pd.read_csv(out / "cohort" / "cmb_counts.csv", dtype=str)
        .set_index("participant_id")
        .loc["sub-01"]
    )
    assert row["reviewed"] == "true" and row["n_reviewers"] == "1"
    assert int(row["n_cmb_reviewed"]) == int(row["n_cmb"]) - len(kept)
    assert vfile.is_file()


def job_counts_of(proc) -> tuple[Counter, str]:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    return job_counts(text), text


@pytest.mark.slow
def test_train_and_evaluate_targets_skip_the_failed_subject(tmp_path):
    """The training and evaluation targets (issue 4) on a real run: a model is trained on the
    subjects that were preprocessed, their detections are scored, and a broken subject is left out."""
    import pandas as pd

    from cmb.cli import main as cmb_main
    from cmb.detect.model import load_model

    bids = tmp_path / "bids"
    assert (
        cmb_main(
            [
                "synth",
                "--out",
                str(bids),
                "--n-subjects",
                "3",
                "--seed",
                "11",
                "--preset",
                "tiny",
                "--count-profile",
                "enriched",
            ]
        )
        == 0
    )
    _truncate(next(p for p in sorted((bids / "sub-03").rglob("*.nii.gz")) if "phase" not in p.name))
    out = tmp_path / "out"
    proc = run_snakemake(
        tmp_path,
        "--profile",
        str(REPO / "profiles" / "local"),
        "--cores",
        "2",
        "train_model",
        "evaluate_detections",
        "--config",
        f"bids_dir={bids}",
        f"output_dir={out}",
        "training={epochs: 2, steps_per_epoch: 2, val_fraction: 0.5}",
        timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    card = load_model(out / "model").card  # checks the SHA-256 of the new weights
    data = card["training"]["data"]
    assert card["training"]["epochs_run"] == 2 and len(card["training"]["log"]) == 2
    assert (
        data["train"]["n_subjects"] == data["validation"]["n_subjects"] == 1
    )  # sub-03 failed at ingest
    assert (
        data["train"]["synthetic_cohort_seeds"]
        == data["validation"]["synthetic_cohort_seeds"]
        == [11]
    )
    subjects = pd.read_csv(out / "evaluation" / "subjects.csv")
    assert sorted(subjects["subject"]) == ["sub-01", "sub-02"]
    truth = sum(
        len(pd.read_csv(p, sep="\t"))
        for sub in ("01", "02")
        for p in (bids / "derivatives" / "cmb-truth" / f"sub-{sub}").rglob("*_label-CMB_dseg.tsv")
    )
    assert subjects["n_truth"].sum() == truth > 0
    # scored at the threshold of the model that detected (the shipped one), not the new one's
    shipped = load_model(REPO / "cmb" / "detect" / "weights" / "default").card["threshold"]
    assert subjects["threshold"].tolist() == pytest.approx([shipped] * 2)
    cohort = pd.read_csv(out / "evaluation" / "cohort.csv")
    assert cohort["n_truth"].sum() >= truth and (out / "evaluation" / "froc.png").stat().st_size > 0
