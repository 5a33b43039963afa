"""Closing the reviewer loop: verdict files as the ground truth of `cmb calibrate`, `cmb train`
and `cmb evaluate`, and the cohort table's review columns through the workflow."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from test_detect import detected, scan  # noqa: F401 - module fixtures: a preprocessed tiny scan, detected

from cmb.detect.__main__ import DEFAULT_MODEL
from cmb.detect.model import load_model
from cmb.detect.recalibrate import recalibrate
from cmb.detect.training import build_parser as train_parser
from cmb.detect.training import sample_scan
from cmb.evaluation import load_truth
from cmb.verdicts import write_verdicts


def _verdict_file(table: pd.DataFrame, n_accept: int, n_reject: int, folder, reviewer="alice"):
    """Accept the ``n_accept`` most confident candidates, reject the next ``n_reject``; the rest unreviewed."""
    top = table.sort_values("confidence", ascending=False, kind="stable").head(n_accept + n_reject)
    v = pd.DataFrame(
        {
            "x_mm": top["x_mm"],
            "y_mm": top["y_mm"],
            "z_mm": top["z_mm"],
            "verdict": ["accept"] * n_accept + ["reject"] * n_reject,
            "reason": ["n/a"] * n_accept + ["other"] * n_reject,
            "candidate_id": top["candidate_id"],
            "radius_mm": 0.0,
            "confidence": top["confidence"],
        }
    )
    return write_verdicts(v, folder, "sub-01", reviewer)


def _kept(table: pd.DataFrame, card: dict, shipped: dict) -> int:
    """Candidates at or above the operating point of ``card`` (same logits as the shipped detection)."""
    c = table["confidence"].clip(1e-7, 1 - 1e-7).to_numpy(float)
    z = (np.log(c / (1 - c)) - shipped["calibration"]["b"]) / shipped["calibration"]["a"]
    t = card["threshold"]
    return int(
        (card["calibration"]["a"] * z + card["calibration"]["b"] >= np.log(t / (1 - t))).sum()
    )


def test_verdict_truth_leaves_unreviewed_candidates_out(scan, detected, tmp_path):  # noqa: F811
    table = detected[0]
    vfile = _verdict_file(table, 3, 10, tmp_path)
    truth = load_truth(vfile)
    assert truth.n == 3 and len(truth.non_cmb) == 10
    samples = sample_scan(
        replace(scan, truth=vfile), load_model(DEFAULT_MODEL).card.get("screen"), keep_all=True
    )
    assert (
        len(table) > 1000 and 13 <= len(samples.labels) <= 20
    )  # the judged ones, not the 2,000+ others
    assert int(samples.labels.sum()) >= 3


def test_verdicts_move_the_calibrated_threshold_the_expected_way(scan, detected, tmp_path):  # noqa: F811
    table = detected[0]
    shipped = load_model(DEFAULT_MODEL).card
    n_above = int(table["above_threshold"].sum())
    assert n_above >= 4
    kept = {}
    for name, n_accept in (("more", n_above + 4), ("fewer", n_above - 2)):
        vfile = _verdict_file(table, n_accept, 20, tmp_path / name)
        card = recalibrate(
            DEFAULT_MODEL,
            [replace(scan, truth=vfile)],
            tmp_path / f"model-{name}",
            tta=shipped["tta"],
            progress=False,
            phase_wrap_limit=shipped["phase_wrap_limit"],
        )
        kept[name] = _kept(table, card, shipped)
    # a reviewer who accepts 4 candidates below the threshold lowers it; one who rejects
    # the 2 least confident detections raises it (within one candidate of the cut: the
    # table's confidences have 4 decimals, and a point can hit a neighbouring candidate)
    assert kept["more"] > n_above > kept["fewer"], (kept, n_above)
    assert abs(kept["more"] - (n_above + 4)) <= 1 and abs(kept["fewer"] - (n_above - 2)) <= 1, (
        kept,
        n_above,
    )


def test_train_init_shipped_is_the_shipped_model():
    args = train_parser().parse_args(
        ["--derivatives", "d", "--truth", "t", "--out", "o", "--init", "shipped"]
    )
    assert args.init == DEFAULT_MODEL and (args.init / "model_card.json").exists()


def test_evaluate_scores_the_tool_against_reviewers_and_reviewers_against_each_other(
    tmp_path, capsys
):
    from cmb.evaluation import main as evaluate_main

    det = pd.DataFrame(
        {
            "x_mm": [0.0, 20.0, 40.0, 60.0],
            "y_mm": [0.0] * 4,
            "z_mm": [0.0] * 4,
            "confidence": [0.9, 0.8, 0.7, 0.6],
        }
    )
    (tmp_path / "det").mkdir()
    det.to_csv(tmp_path / "det" / "sub-01_detections.tsv", sep="\t", index=False)
    base = det.assign(candidate_id=[1, 2, 3, 4], reason="n/a", radius_mm=0.0)
    write_verdicts(
        base.assign(
            verdict=["accept", "accept", "reject", "accept"], reason=["n/a", "n/a", "vein", "n/a"]
        ),
        tmp_path / "v",
        "sub-01",
        "alice",
    )
    write_verdicts(
        base.assign(
            verdict=["accept", "accept", "reject", "reject"],
            reason=["n/a", "n/a", "vein", "calcification"],
        ),
        tmp_path / "v",
        "sub-01",
        "bob",
    )
    assert (
        evaluate_main(
            [
                "--detections",
                str(tmp_path / "det"),
                "--truth",
                str(tmp_path / "v"),
                "--out",
                str(tmp_path / "out"),
                "--threshold",
                "0.5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    # consensus: 2 CMBs (1, 2), 3 rejected, 4 a tie (no CMB in the truth): both found
    assert "1 scans, 2 CMBs" in out and "sensitivity 1.0" in out
    assert "reviewers alice and bob: 1 scans, 4 candidates, agreement 0.750, kappa 0.500" in out
    agree = pd.read_csv(tmp_path / "out" / "reviewers.csv")
    assert agree[["n_both_cmb", "n_only_a", "n_only_b"]].values.tolist() == [[2, 1, 0]]


def test_cohort_table_gains_review_columns_once_verdicts_exist(tmp_path):
    from test_report import _subject

    from cmb.cohort_tables import SubjectFiles, write_cohort_tables

    files = _subject(tmp_path)
    subjects = [
        SubjectFiles(
            "01",
            None,
            detections=files["detections"],
            sidecar=files["sidecar"],
            records=files["records"],
        )
    ]
    counts, _ = write_cohort_tables(
        subjects, tmp_path / "c" / "cmb_counts.csv", tmp_path / "c" / "cmb_detections.csv"
    )
    assert "reviewed" not in counts.columns
    det = pd.read_csv(files["detections"], sep="\t")
    cmb = det[det["is_cmb"]]
    v = cmb.assign(
        verdict=["reject"] + ["accept"] * (len(cmb) - 1),
        reason=["vein"] + ["n/a"] * (len(cmb) - 1),
        candidate_id=cmb["cmb_id"],
    )
    vfile = write_verdicts(v, tmp_path / "verdicts", "sub-01", "alice")
    before = vfile.read_bytes()
    counts, _ = write_cohort_tables(
        subjects,
        tmp_path / "c" / "cmb_counts.csv",
        tmp_path / "c" / "cmb_detections.csv",
        verdicts=[vfile],
    )
    row = pd.read_csv(tmp_path / "c" / "cmb_counts.csv", dtype=str).iloc[0]
    assert row[["reviewed", "verdict", "n_reviewers", "n_cmb_reviewed"]].tolist() == [
        "true",
        "corrected",
        "1",
        str(len(cmb) - 1),
    ]
    assert "n_reviewers" in (tmp_path / "c" / "cmb_counts.json").read_text()
    assert vfile.read_bytes() == before  # the reviewer's file is never rewritten
