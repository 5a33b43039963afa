"""The detector on a real synthetic scan: shipped weights, CLI, training, bad input.

One `cmb synth` tiny subject (1.5 x 1.5 x 2.5 mm, 8 CMBs, veins, calcifications)
is preprocessed once by the real preprocessing; the ground truth comes from the
generator.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from cmb.annotations import Scan
from cmb.detect import CANDIDATE_COLUMNS
from cmb.detect.__main__ import DEFAULT_MODEL, run_detect
from cmb.detect.__main__ import main as detect_main
from cmb.detect.calibration import calibrate
from cmb.detect.inference import find_candidates
from cmb.detect.model import ModelError, load_model
from cmb.detect.recalibrate import main as calibrate_main
from cmb.detect.recalibrate import recalibrate
from cmb.detect.training import (
    ScanSamples,
    TrainConfig,
    _slice_balanced_weights,
    annotated_datasets,
    sample_scan,
    split_by_subject,
    train_model,
)
from cmb.evaluation import evaluate_cohort, load_truth
from cmb.preprocess import preprocess_subject
from cmb.synth import SynthOptions, synthesize


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Scan:
    root = tmp_path_factory.mktemp("detect")
    synthesize(
        SynthOptions(
            out=root / "bids",
            n_subjects=1,
            seed=21,
            preset="tiny",
            n_cmb=8,
            phase_units="rad",
            paramagnetic_phase="negative",
        ),
        log=lambda m: None,
    )
    mag_src = next((root / "bids").rglob("*part-mag*.nii.gz"))
    ph_src = next((root / "bids").rglob("*part-phase*.nii.gz"))
    ing = root / "ingested"
    ing.mkdir()
    for src, name in ((mag_src, "mag.nii.gz"), (ph_src, "phase.nii.gz")):
        img = nib.load(src)
        nib.save(nib.Nifti1Image(img.get_fdata(dtype=np.float32), img.affine), ing / name)
    out = root / "preproc"
    preprocess_subject(
        ing / "mag.nii.gz",
        ing / "phase.nii.gz",
        out / "sub-01_desc-preproc_swi.nii.gz",
        out / "sub-01_desc-brain_mask.nii.gz",
        out / "sub-01_part-phase_desc-preproc_swi.nii.gz",
        paramagnetic_phase="negative",
        n4_iterations=(50, 50),
        mask_work_mm=2.0,
    )
    truth = next((root / "bids" / "derivatives" / "cmb-truth").rglob("*_label-CMB_dseg.nii.gz"))
    return Scan(
        "sub-01",
        "tiny",
        out / "sub-01_desc-preproc_swi.nii.gz",
        out / "sub-01_desc-brain_mask.nii.gz",
        out / "sub-01_part-phase_desc-preproc_swi.nii.gz",
        truth,
    )


@pytest.fixture(scope="module")
def small_scan(scan, tmp_path_factory) -> Scan:
    """The scan with its brain mask cut to a box around two of its CMBs: the same code path
    on a tenth of the candidates (about 270, 3 s of scoring instead of 40), for the tests of
    options, devices and determinism rather than of accuracy."""
    mask = nib.load(scan.mask)
    box = np.zeros(mask.shape, np.uint8)
    box[40:80, 55:95, 8:32] = 1
    path = tmp_path_factory.mktemp("small") / "sub-01_desc-brain_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(mask.dataobj).astype(np.uint8) * box, mask.affine), path)
    return replace(scan, mask=path)


def _outputs(tmp_path: Path) -> dict:
    return {
        k: str(tmp_path / f"sub-01_{k}")
        for k in ("cmb.tsv", "cmb.json", "dseg.nii.gz", "probseg.nii.gz")
    }


def _output_options(out: dict) -> list[str]:
    """The detect CLI's four output options for the paths of :func:`_outputs`."""
    return [
        "--out-table",
        out["cmb.tsv"],
        "--out-sidecar",
        out["cmb.json"],
        "--out-dseg",
        out["dseg.nii.gz"],
        "--out-prob",
        out["probseg.nii.gz"],
    ]


def _detect(scan: Scan, tmp_path: Path, **kwargs) -> tuple[pd.DataFrame, dict, dict]:
    out = _outputs(tmp_path)
    sidecar = run_detect(
        str(scan.image),
        str(scan.mask),
        out["cmb.tsv"],
        out["cmb.json"],
        out["dseg.nii.gz"],
        out["probseg.nii.gz"],
        **kwargs,
    )
    return pd.read_csv(out["cmb.tsv"], sep="\t"), sidecar, out


@pytest.fixture(scope="module")
def detected(scan, tmp_path_factory):
    """Detection with the shipped weights, magnitude + phase, on the CPU."""
    return _detect(scan, tmp_path_factory.mktemp("detected"), phase=str(scan.phase), use_gpu=False)


def test_shipped_weights_find_the_microbleeds(scan, detected):
    table, sidecar, out = detected
    assert list(table.columns) == CANDIDATE_COLUMNS
    assert sidecar["model_sha256"] == load_model(DEFAULT_MODEL).card["weights_sha256"]
    assert sidecar["device"] == "cpu" and sidecar["phase_used"]
    # 169 of the 2,860 candidates sit in wrapped phase (the tiny head's air cavities)
    assert sidecar["phase_wrap_limit"] == load_model(DEFAULT_MODEL).card["phase_wrap_limit"] == 0.15
    assert 50 < sidecar["n_scored_without_phase"] < 500
    assert (~table["phase_used"]).sum() == sidecar["n_scored_without_phase"]
    kept = table[table["above_threshold"]]
    _, metrics = evaluate_cohort([("sub-01", "tiny", kept, load_truth(scan.truth))])
    # The tiny preset (1.5 x 1.5 x 2.5 mm) is not among the training acquisitions: the
    # shipped model finds 6 of these 7 visible CMBs with no FP among 2,860 candidates (5 with 2 FP without phase).
    assert metrics["sensitivity"] >= 0.5, metrics
    assert metrics["fp_avg"] <= 6, metrics
    # the images agree with the table
    labels = np.asarray(nib.load(out["dseg.nii.gz"]).dataobj)
    prob = nib.load(out["probseg.nii.gz"]).get_fdata()
    for row in table.head(20).itertuples():
        assert labels[row.i, row.j, row.k] == row.candidate_id
        assert prob[row.i, row.j, row.k] == pytest.approx(row.confidence, abs=1e-5)
    assert kept["phase_sign"].isin(["paramagnetic", "diamagnetic"]).all()


def test_magnitude_only_path_also_detects(scan, tmp_path):
    table, sidecar, _ = _detect(scan, tmp_path, use_gpu=False)
    assert not sidecar["phase_used"] and table["phase_sign"].isna().all()  # "n/a" in the TSV
    assert not table["phase_used"].any()
    _, metrics = evaluate_cohort(
        [("sub-01", "tiny", table[table["above_threshold"]], load_truth(scan.truth))]
    )
    assert metrics["sensitivity"] >= 0.5 and metrics["fp_avg"] <= 6, metrics


def test_detection_is_deterministic_and_batch_size_independent(small_scan, tmp_path):
    def run(name, batch_size):
        phase = str(small_scan.phase)
        return _detect(small_scan, tmp_path / name, phase=phase, use_gpu=False, **batch_size)[2]

    a, b, c = run("a", {}), run("b", {"batch_size": 37}), run("c", {"batch_size": 256})
    ta, tb = pd.read_csv(a["cmb.tsv"], sep="\t"), pd.read_csv(b["cmb.tsv"], sep="\t")
    assert ta["above_threshold"].any() and len(ta) > 256  # batches of 256 split the candidates
    pd.testing.assert_frame_equal(ta.drop(columns="confidence"), tb.drop(columns="confidence"))
    np.testing.assert_allclose(ta["confidence"], tb["confidence"], atol=1e-4)
    assert Path(a["cmb.tsv"]).read_bytes() == Path(c["cmb.tsv"]).read_bytes()


requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: run on a GPU machine"
)


def _same_candidates(
    a: pd.DataFrame, b: pd.DataFrame, threshold: float, atol: float = 0.02
) -> None:
    """CUDA and CPU tables agree to float tolerance: the screen's candidates (a tie may flip
    one or two), confidences within ``atol`` (mixed precision), and above-threshold flags
    except within ``atol`` of the threshold."""
    m = a.merge(b, on=["i", "j", "k"], how="outer", indicator=True)
    assert (m["_merge"] != "both").sum() <= max(2, len(a) // 500), m["_merge"].value_counts()
    both = m[m["_merge"] == "both"]
    np.testing.assert_allclose(both["confidence_x"], both["confidence_y"], atol=atol)
    flipped = both[both["above_threshold_x"] != both["above_threshold_y"]]
    assert ((flipped["confidence_x"] - threshold).abs() < atol).all(), flipped


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="a CUDA device is visible: the fallback needs a machine without one",
)
def test_a_gpu_requested_where_none_is_visible_runs_on_the_cpu_with_one_warning_line(
    small_scan, tmp_path, caplog
):
    """The CLI without --cpu (detection.use_gpu true, the default) on a machine without a
    usable GPU: one warning (one line) that names the reason and the setting, the CPU
    path, and the --cpu run's bytes. (The job log gets it as one line through the CLI's
    logging format; .ci/container_test.sh counts it in the image's detect_cmb logs.)"""

    def args(out):
        return [
            "--image",
            str(small_scan.image),
            "--mask",
            str(small_scan.mask),
            "--phase",
            str(small_scan.phase),
            *_output_options(out),
        ]

    out, cpu_out = _outputs(tmp_path), _outputs(tmp_path / "cpu")
    caplog.set_level("INFO")
    assert detect_main(args(out)) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "\n" not in warned[0], warned
    assert "GPU requested but" in warned[0] and "running on the CPU" in warned[0]
    assert "detection.use_gpu: false" in warned[0]
    assert json.loads(Path(out["cmb.json"]).read_text())["device"] == "cpu"
    caplog.clear()
    assert detect_main(args(cpu_out) + ["--cpu"]) == 0  # asked for the CPU: no warning
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert Path(out["cmb.tsv"]).read_bytes() == Path(cpu_out["cmb.tsv"]).read_bytes()


@requires_cuda
def test_cuda_gives_the_cpu_results(scan, detected, tmp_path):
    cpu_table, cpu_side, _ = detected
    table, side, out = _detect(scan, tmp_path / "a", phase=str(scan.phase), use_gpu=True)
    assert side["device"] == "cuda" and side["mixed_precision"] and side["gpu_peak_mb"] > 0
    _same_candidates(cpu_table, table, side["threshold"])
    _, _, again = _detect(scan, tmp_path / "b", phase=str(scan.phase), use_gpu=True)
    assert (
        Path(out["cmb.tsv"]).read_bytes() == Path(again["cmb.tsv"]).read_bytes()
    )  # deterministic on CUDA too


@requires_cuda
def test_short_gpu_memory_falls_back_with_the_same_results(scan, detected, tmp_path, caplog):
    """With 32 MB of GPU memory allowed, the screen moves to the CPU and the batch shrinks."""
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(
        32 * 2**20 / torch.cuda.get_device_properties(0).total_memory
    )
    try:
        table, side, _ = _detect(scan, tmp_path, phase=str(scan.phase), use_gpu=True)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert side["device"] == "cuda"
    assert "GPU memory short" in caplog.text
    _same_candidates(detected[0], table, side["threshold"])


def test_work_that_does_not_fit_in_free_gpu_memory_goes_to_the_cpu(monkeypatch):
    from cmb.detect.inference import _fitting_device

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * 2**30, 80 * 2**30))
    cuda = torch.device("cuda")
    assert _fitting_device(cuda, 3 * 2**30, "screen").type == "cpu"
    assert _fitting_device(cuda, 2**29, "screen") == cuda
    assert _fitting_device(torch.device("cpu"), 2**40, "screen").type == "cpu"


def test_work_that_runs_out_of_gpu_memory_is_redone_on_the_cpu(monkeypatch, caplog):
    from cmb.detect.inference import _where_it_fits

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 * 2**30, 80 * 2**30))
    tried = []

    def work(device):
        tried.append(device.type)
        if device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "done"

    assert _where_it_fits(work, torch.device("cuda"), 2**20, "screen") == "done"
    assert tried == ["cuda", "cpu"] and "GPU memory short" in caplog.text


def test_screen_finds_every_microbleed_of_the_subject(scan):
    s = sample_scan(scan, keep_all=True)
    assert (
        s.n_truth == 7
    )  # of the 8 placed, one is too faint to see on this scan (not in the truth)
    assert s.n_truth_found >= 6  # stage-1 sensitivity
    assert s.labels.sum() >= s.n_truth_found


def test_threshold_override_and_calibration(small_scan, tmp_path):
    phase = str(small_scan.phase)
    table, sidecar, _ = _detect(small_scan, tmp_path, phase=phase, use_gpu=False, threshold=0.0)
    assert sidecar["threshold"] == 0.0 and table["above_threshold"].all() and len(table) > 100
    assert calibrate(np.array([0.0]), {"a": 2.0, "b": 0.0})[0] == pytest.approx(0.5)
    assert calibrate(np.array([1.0]), {"a": 2.0, "b": -2.0})[0] == pytest.approx(0.5)


def test_cli_names_the_broken_file(scan, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(Path(scan.image).read_bytes()[:2000])
    out = _outputs(tmp_path)
    argv = [
        "--image",
        str(broken),
        "--mask",
        str(scan.mask),
        *_output_options(out),
        "--cpu",
    ]
    with pytest.raises(ValueError, match="cannot read") as raised:
        detect_main(argv)
    assert str(broken) in str(raised.value)
    assert not Path(out["cmb.tsv"]).exists()


def test_cli_rejects_a_corrupt_model(scan, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, model)
    w = model / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0x55
    w.write_bytes(bytes(data))
    out = _outputs(tmp_path)
    argv = [
        "--image",
        str(scan.image),
        "--mask",
        str(scan.mask),
        "--model",
        str(model),
        *_output_options(out),
    ]
    with pytest.raises(ModelError, match="model.safetensors: SHA-256"):
        detect_main(argv)


def test_phase_on_another_grid_is_refused(scan, tmp_path):
    img = nib.load(scan.phase)
    other = tmp_path / "phase.nii.gz"
    nib.save(nib.Nifti1Image(img.get_fdata(dtype=np.float32)[:-2], img.affine), other)
    with pytest.raises(ValueError, match="phase grid"):
        _detect(scan, tmp_path, phase=str(other), use_gpu=False)


def test_training_reduces_the_loss(scan, tmp_path):
    torch.set_num_threads(2)
    samples = sample_scan(scan, n_hard=60, n_random=40)
    val = sample_scan(scan, keep_all=True)
    cfg = TrainConfig(
        width=4, epochs=4, steps_per_epoch=6, batch_size=16, lr=3e-3, patience=10, seed=1
    )
    card = train_model(
        [samples],
        [val],
        tmp_path / "m",
        cfg,
        {"name": "test"},
        log_path=tmp_path / "log.csv",
        progress=False,
    )
    log = pd.read_csv(tmp_path / "log.csv")
    assert len(log) == 4
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]
    assert set(card["calibration"]) >= {"a", "b"} and 0 <= card["threshold"] <= 1
    loaded = load_model(tmp_path / "m")
    assert loaded.card["weights_sha256"] == card["weights_sha256"]


def test_fine_tuning_starts_from_the_given_weights(scan, tmp_path):
    samples = sample_scan(scan, n_hard=30, n_random=10)
    cfg = TrainConfig(width=12, epochs=1, steps_per_epoch=1, batch_size=8, lr=1e-9, seed=0)
    card = train_model(
        [samples],
        [samples],
        tmp_path / "ft",
        cfg,
        {"name": "ft"},
        init_dir=DEFAULT_MODEL,
        progress=False,
    )
    base = load_model(DEFAULT_MODEL).net.state_dict()
    tuned = load_model(tmp_path / "ft").net.state_dict()
    key = next(k for k in base if k.endswith("weight") and base[k].ndim == 5)
    torch.testing.assert_close(base[key], tuned[key], atol=1e-5, rtol=0)
    assert card["hyper_parameters"] == load_model(DEFAULT_MODEL).card["hyper_parameters"]


def test_a_split_without_cmbs_is_a_clear_error(scan, tmp_path):
    samples = sample_scan(scan, n_hard=30, n_random=10)
    cfg = TrainConfig(width=4, epochs=1, steps_per_epoch=1, batch_size=8)
    no_truth = replace(samples, n_truth=0)
    with pytest.raises(ValueError, match=r"validation scans \(sub-01\) hold no CMB"):
        train_model([samples], [no_truth], tmp_path / "a", cfg, {"name": "a"}, progress=False)
    negatives = replace(samples, labels=torch.zeros_like(samples.labels))
    with pytest.raises(ValueError, match="no CMB among the candidates of the 1 training scan"):
        train_model([negatives], [samples], tmp_path / "b", cfg, {"name": "b"}, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("option", ["--ema", "--phase-dropout"])
def test_training_fractions_outside_0_1_are_refused(option, capsys):
    from cmb.detect.training import build_parser

    base = ["--derivatives", "d", "--truth", "t", "--out", "o"]
    assert (
        getattr(build_parser().parse_args(base + [option, "0.9"]), option[2:].replace("-", "_"))
        == 0.9
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + [option, "1.5"])
    assert "must be between 0 and 1, got 1.5" in capsys.readouterr().err


def test_ema_saves_the_average_not_the_last_weights(scan, tmp_path):
    samples = sample_scan(scan, n_hard=30, n_random=10)

    def trained(name, steps, ema):
        cfg = TrainConfig(
            width=12, epochs=1, steps_per_epoch=steps, batch_size=8, lr=1e-2, seed=0, ema=ema
        )
        train_model(
            [samples],
            [samples],
            tmp_path / name,
            cfg,
            {"name": name},
            init_dir=DEFAULT_MODEL,
            progress=False,
        )
        return load_model(tmp_path / name).net.state_dict()

    one_step, four_steps = trained("one", 1, 0.0), trained("four", 4, 0.0)
    # a decay of almost 1 keeps the average at its first value: the weights after step 1
    averaged = trained("ema", 4, 1 - 1e-9)
    conv = next(k for k in one_step if k.endswith("weight") and one_step[k].ndim == 5)
    assert not torch.allclose(one_step[conv], four_steps[conv], atol=1e-4)
    torch.testing.assert_close(averaged[conv], one_step[conv], atol=1e-6, rtol=0)


def test_calibrate_refits_the_operating_point_and_keeps_the_weights(
    scan, small_scan, tmp_path, capsys
):
    out = tmp_path / "recal"
    assert (
        calibrate_main(
            [
                "--model",
                str(DEFAULT_MODEL),
                "--derivatives",
                str(tmp_path),
                "--truth",
                str(tmp_path),
                "--out",
                str(DEFAULT_MODEL),
            ]
        )
        == 2
    )
    assert "is the input model" in capsys.readouterr().err
    assert (
        calibrate_main(
            [
                "--model",
                str(DEFAULT_MODEL),
                "--derivatives",
                str(tmp_path / "none"),
                "--truth",
                str(tmp_path),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert not out.exists()

    card = recalibrate(
        DEFAULT_MODEL, [scan], out, tta=4, max_fp_avg=1.0, progress=False, phase_wrap_limit=0.3
    )
    shipped = load_model(DEFAULT_MODEL).card
    assert card["weights_sha256"] == shipped["weights_sha256"]
    assert (
        card["tta"] == 4
        and card["phase_wrap_limit"] == 0.3
        and card["calibration"] != shipped["calibration"]
    )
    assert card["validation"]["fp_avg"] <= 1.0 and card["threshold_rule"].endswith("FPavg <= 1")
    assert card["validation"]["n_cmb"] == load_truth(scan.truth).n
    assert card["recalibration"]["previous"]["threshold"] == shipped["threshold"]
    phase = str(small_scan.phase)
    _, sidecar, _ = _detect(small_scan, tmp_path, phase=phase, use_gpu=False, model_dir=out)
    assert sidecar["test_time_views"] == 4 and sidecar["phase_wrap_limit"] == 0.3
    assert sidecar["threshold"] == card["threshold"] and sidecar["n_scored_without_phase"] >= 0


def test_candidates_of_an_empty_mask_region_are_none():
    mag = np.ones((30, 30, 20), np.float32)
    mask = np.zeros(mag.shape, bool)
    mask[5:25, 5:25, 5:15] = True
    cands = find_candidates(mag, mask, (1.0, 1.0, 2.0))
    assert len(cands.table) == 0 and not cands.labels.any()
    assert json.dumps(cands.seconds)


def test_validation_subjects_come_from_the_chosen_datasets():
    scans = [
        Scan(f"d{d}/sub-{n:02d}{ses}", "swi-3t", Path("i"), Path("m"), None, Path("t"))
        for d in (1, 2)
        for n in range(1, 6)
        for ses in ("_ses-01", "_ses-02")
    ]
    pool = {s.subject for s in scans if s.key.startswith("d2/")}
    train, val = split_by_subject(scans, 0.4, seed=3, val_pool=pool)
    assert {s.subject for s in val} <= pool and len({s.subject for s in val}) == 2
    assert not {s.subject for s in train} & {s.subject for s in val}  # both sessions on one side
    assert len(train) + len(val) == len(scans)
    _, val_any = split_by_subject(scans, 0.4, seed=3)
    assert len({s.subject for s in val_any}) == 4
    with pytest.raises(ValueError, match="one --truth per --derivatives"):
        annotated_datasets([Path("a"), Path("b")], [Path("t")])


def test_positive_balancing_weights_each_slice_thickness_by_the_root_of_its_count(
    make_nifti, tmp_path
):
    def samples(name, zooms, labels):
        img = make_nifti(tmp_path / f"{name}.nii.gz", shape=(8, 8, 4), zooms=zooms)
        lab = torch.tensor(labels, dtype=torch.float32)
        return ScanSamples(
            Scan(name, "x", img, img, None, img),
            torch.zeros(len(lab), 1),
            torch.zeros(len(lab), 5),
            lab,
            pd.DataFrame(),
            0,
            0,
        )

    thin = [
        samples("thin1", (0.5, 0.5, 2.0), [1] * 5 + [0] * 3),
        samples("thin2", (0.5, 0.5, 2.0), [1] * 4),
    ]
    thick = [samples("thick", (1.0, 1.0, 5.0), [1, 0, 0])]
    w = _slice_balanced_weights(thin + thick)
    labels = torch.cat([s.labels for s in thin + thick])
    pos = labels > 0
    share_thin = float(w[:12][pos[:12]].sum() / w[pos].sum())
    assert share_thin == pytest.approx(3 / 4)  # sqrt(9) : sqrt(1), against 9 : 1 drawn uniformly
    assert torch.all(w[:12] == w[0]) and float(w[-1]) == pytest.approx(1.0)
