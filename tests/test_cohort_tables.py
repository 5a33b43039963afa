"""cmb.cohort_tables: counts equal the detections tables, MARS pattern, status, QC flags,
determinism, data dictionary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from cmb.cohort_tables import (
    SubjectFiles,
    count_detections,
    mars_pattern,
    read_sites,
    stage_status,
    write_cohort_tables,
)
from cmb.mars_region import REGIONS
from cmb.tables import COUNT_COLUMNS, DETECTION_COLUMNS, REJECT_REASONS, data_dictionary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_report import synthetic_cohort  # noqa: E402


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    subjects = synthetic_cohort(root / "subjects", 60, seed=4)
    counts, det = write_cohort_tables(
        subjects,
        root / "cohort" / "cmb_counts.csv",
        root / "cohort" / "cmb_detections.csv",
        out_ratings=root / "cohort" / "cmb_ratings_template.tsv",
        out_counts_long=root / "cohort" / "cmb_counts_long.csv",
    )
    return {"root": root, "subjects": subjects, "counts": counts, "det": det}


def _read(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _read_tsv(path):
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def test_counts_equal_the_detections_table(cohort):
    counts = _read(cohort["root"] / "cohort" / "cmb_counts.csv")
    det = _read(cohort["root"] / "cohort" / "cmb_detections.csv")
    cmb = det[det["is_cmb"] == "true"]
    have = counts[counts["n_cmb"] != "n/a"]
    assert len(have) > 50
    for row in have.to_dict("records"):
        mine = cmb[cmb["participant_id"] == row["participant_id"]]
        assert int(row["n_cmb"]) == len(mine)
        assert (
            int(row["n_above_threshold"]) == (det["participant_id"] == row["participant_id"]).sum()
        )
        if row["n_lobar"] == "n/a":  # registration failed: no anatomy
            continue
        for cat in ("lobar", "deep", "infratentorial"):
            assert int(row[f"n_{cat}"]) == (mine["mars_category"] == cat).sum()
        for region in REGIONS:
            for h in ("L", "R"):
                assert (
                    int(row[f"n_{region}_{h}"])
                    == ((mine["mars_region"] == region) & (mine["hemisphere"] == h)).sum()
                )
    assert int(pd.to_numeric(have["n_cmb"]).sum()) == len(cmb)


def test_detections_csv_has_the_tsv_columns_and_every_above_threshold_row(cohort):
    det = _read(cohort["root"] / "cohort" / "cmb_detections.csv")
    assert list(det.columns) == DETECTION_COLUMNS
    tsvs = [_read_tsv(s.detections) for s in cohort["subjects"] if s.detections]
    above = pd.concat([t[t["above_threshold"] == "true"] for t in tsvs])
    assert sum(map(len, tsvs)) > len(above) > 0  # the fixture has below-threshold candidates
    assert len(det) == len(above)
    assert (det["above_threshold"] == "true").all()
    assert (det["rejected"] == "true").any() and (det["is_cmb"] == "true").any()
    key = list(zip(det["participant_id"], det["cmb_id"].astype(int)))
    assert key == sorted(key)


def test_failed_scans_have_status_stage_and_na_counts(cohort):
    counts = cohort["counts"]
    failed = counts[counts["status"] == "failed"]
    assert len(failed) >= 1
    assert (failed["failing_stage"] != "n/a").all() and (failed["failure_message"] != "n/a").all()
    no_table = failed[failed["failing_stage"].isin(["ingest", "preprocess", "detect", "localize"])]
    assert (no_table["n_cmb"] == "n/a").all() and (no_table["mars_pattern"] == "n/a").all()
    assert (counts.loc[counts["status"] == "ok", "failing_stage"] == "n/a").all()
    assert failed["qc_flags"].str.contains("failed").all()


def test_one_row_per_scan_sorted(cohort):
    counts = cohort["counts"]
    assert len(counts) == 60 and list(counts.columns) == COUNT_COLUMNS
    assert counts["participant_id"].tolist() == sorted(counts["participant_id"])


def test_extreme_count_is_flagged(cohort):
    row = cohort["counts"].set_index("participant_id").loc["sub-0007"]
    assert row["qc_extreme_count"] == "warn" and "extreme_count" in row["qc_flags"]


def test_rerun_is_byte_identical(cohort, tmp_path):
    write_cohort_tables(cohort["subjects"], tmp_path / "c.csv", tmp_path / "d.csv")
    assert (tmp_path / "c.csv").read_bytes() == (
        cohort["root"] / "cohort" / "cmb_counts.csv"
    ).read_bytes()
    assert (tmp_path / "d.csv").read_bytes() == (
        cohort["root"] / "cohort" / "cmb_detections.csv"
    ).read_bytes()


def test_data_dictionary_describes_every_column(cohort):
    for name, columns in (("cmb_counts", COUNT_COLUMNS), ("cmb_detections", DETECTION_COLUMNS)):
        meta = json.loads((cohort["root"] / "cohort" / f"{name}.json").read_text())
        assert list(meta) == list(columns)
        assert all(meta[c]["Description"] for c in columns)
    assert set(data_dictionary("detections")["rejected_reason"]["Levels"]) == {
        *REJECT_REASONS,
        "n/a",
    }


def test_ratings_template_lists_every_scan(cohort):
    t = pd.read_csv(
        cohort["root"] / "cohort" / "cmb_ratings_template.tsv",
        sep="\t",
        dtype=str,
        keep_default_na=False,
    )
    assert (
        list(t.columns) == ["participant_id", "session_id", "rating", "reviewer", "comment"]
        and len(t) == 60
    )


def test_counts_for_a_scan_without_anatomy():
    det = pd.DataFrame(
        {
            "is_cmb": ["true"],
            "above_threshold": ["true"],
            "rejected": ["false"],
            "rejected_reason": ["n/a"],
            "mars_category": ["n/a"],
            "mars_region": ["n/a"],
            "hemisphere": ["n/a"],
        }
    )
    c = count_detections(det, anatomy=False)
    assert (
        c["n_cmb"] == 1
        and c["n_unlocalized"] == 1
        and c["n_lobar"] == "n/a"
        and c["mars_pattern"] == "n/a"
    )


@pytest.mark.parametrize(
    ("lobar", "deep", "infra", "pattern"),
    [
        (1, 0, 0, "strictly_lobar"),
        (0, 1, 0, "deep_or_mixed"),
        (2, 1, 0, "deep_or_mixed"),
        (1, 0, 1, "deep_or_mixed"),
        (0, 0, 3, "infratentorial_only"),
        (0, 0, 0, "none"),
    ],
)
def test_mars_pattern(lobar, deep, infra, pattern):
    assert mars_pattern(lobar, deep, infra) == pattern


def test_stage_status_names_the_root_cause():
    recs = [
        {"status": "ok", "stage": "ingest"},
        {
            "status": "skipped",
            "stage": "detect",
            "upstream_stage": "preprocess",
            "message": "skipped: ...",
        },
    ]
    assert stage_status(recs)["failing_stage"] == "preprocess"
    assert stage_status([])["status"] == "ok"


def test_read_sites(tmp_path):
    p = tmp_path / "participants.tsv"
    p.write_text("participant_id\tage\tsite\nsub-01\t70\tA\nsub-02\t71\tn/a\n")
    assert read_sites(p) == {"sub-01": "A"}
    assert read_sites(tmp_path / "missing.tsv") == {}


def test_subject_files_with_sessions(tmp_path):
    s = SubjectFiles(
        participant_id="01", session_id="2", records=[{"status": "ok", "stage": "ingest"}]
    )
    counts, det = write_cohort_tables([s], tmp_path / "c.csv", tmp_path / "d.csv")
    assert counts.loc[0, ["participant_id", "session_id"]].tolist() == ["sub-01", "ses-2"]
    assert counts.loc[0, "n_cmb"] == "n/a" and len(det) == 0


def _phase_scan(tmp_path, pid, manufacturer, estimate_sign, z) -> SubjectFiles:
    """A scan whose preprocessed phase carries the decision of ``auto`` for this estimate."""
    from cmb.phase_convention import PhaseSignEstimate, resolve_paramagnetic_phase

    estimate = PhaseSignEstimate(estimate_sign, z, abs(z) >= 3, 0.9, 20, 600, 200, 0.1, 3.0, "")
    decision = resolve_paramagnetic_phase("auto", manufacturer, estimate=estimate)
    phase = tmp_path / f"sub-{pid}_part-phase_desc-preproc_GRE.nii.gz"
    phase.write_bytes(b"")
    (tmp_path / f"sub-{pid}_part-phase_desc-preproc_GRE.json").write_text(
        json.dumps({"PhaseConvention": decision.to_dict()})
    )
    return SubjectFiles(
        participant_id=pid,
        session_id=None,
        phase=phase,
        records=[{"status": "ok", "stage": "ingest"}],
        site="siteA",
    )


def test_an_unconfident_scan_is_flagged_when_its_scanners_other_scans_show_a_flipped_phase(
    tmp_path,
):
    """The case of the flipped cohort (docs/benchmarks.md): a Philips 1.5 T scan with few veins
    (z 2.76, unconfident) keeps the vendor rule's negative sign, while the other scans of the
    same scanner confidently show positive. A GE scan of the site is its own group."""
    scans = [
        _phase_scan(tmp_path, "weak", "Philips", "positive", 2.76),
        _phase_scan(tmp_path, "flippedA", "Philips", "positive", 5.64),
        _phase_scan(tmp_path, "flippedB", "Philips", "positive", 7.52),
        _phase_scan(tmp_path, "ge", "GE", "positive", 1.5),
    ]
    write_cohort_tables(scans, tmp_path / "c.csv", tmp_path / "d.csv")
    c = pd.read_csv(tmp_path / "c.csv", dtype=str, keep_default_na=False).set_index(
        "participant_id"
    )
    cols = ["paramagnetic_phase", "phase_sign_cohort", "phase_convention_cohort_mismatch"]
    assert c.loc["sub-weak", cols].tolist() == ["negative", "positive", "true"]
    assert c.loc["sub-weak", "phase_sign_cohort_z"] == "9.19"
    assert c.loc["sub-weak", "phase_sign_cohort_scans"] == "3"
    assert "phase_convention_cohort_mismatch" in c.loc["sub-weak", "qc_flags"].split(";")
    for pid in ("sub-flippedA", "sub-flippedB"):  # followed their own confident estimate
        assert c.loc[pid, cols].tolist() == ["positive", "positive", "false"]
    # one scan alone: no pooled sign
    assert c.loc["sub-ge", cols].tolist() == ["positive", "undecided", "false"]
    assert c.loc["sub-ge", "phase_sign_cohort_z"] == "n/a"


def test_long_counts_match_the_wide_table(cohort):
    wide = _read(cohort["root"] / "cohort" / "cmb_counts.csv").set_index("participant_id")
    long = _read(cohort["root"] / "cohort" / "cmb_counts_long.csv")
    assert len(long) == 26 * len(wide)
    for r in long.sample(200, random_state=0).to_dict("records"):
        assert (
            r["n_cmb"] == wide.loc[r["participant_id"], f"n_{r['mars_region']}_{r['hemisphere']}"]
        )
    meta = json.loads((cohort["root"] / "cohort" / "cmb_counts_long.json").read_text())
    assert list(meta) == list(long.columns)


def test_phase_convention_mismatch_reaches_the_counts_and_qc_flags(tmp_path):
    from cmb.phase_convention import PhaseSignEstimate, resolve_paramagnetic_phase

    rows = {}
    for pid, estimate_sign, confident in (
        ("flipped", "positive", True),
        ("vague", "positive", False),
        ("agrees", "negative", True),
    ):
        z = (7.5 if confident else 1.2) * (1 if estimate_sign == "positive" else -1)
        estimate = PhaseSignEstimate(estimate_sign, z, confident, 0.9, 20, 600, 200, 0.1, 3.0, "")
        decision = resolve_paramagnetic_phase("auto", "SIEMENS", estimate=estimate)
        phase = tmp_path / f"sub-{pid}_part-phase_desc-preproc_GRE.nii.gz"
        phase.write_bytes(b"")
        (tmp_path / f"sub-{pid}_part-phase_desc-preproc_GRE.json").write_text(
            json.dumps({"PhaseConvention": decision.to_dict()})
        )
        rows[pid] = SubjectFiles(
            participant_id=pid,
            session_id=None,
            phase=phase,
            records=[{"status": "ok", "stage": "ingest"}],
        )
    rows["nophase"] = SubjectFiles(
        participant_id="nophase", session_id=None, records=[{"status": "ok", "stage": "ingest"}]
    )
    counts, _ = write_cohort_tables(rows.values(), tmp_path / "c.csv", tmp_path / "d.csv")
    c = pd.read_csv(tmp_path / "c.csv", dtype=str, keep_default_na=False).set_index(
        "participant_id"
    )
    assert c.loc[
        "sub-flipped", ["paramagnetic_phase", "phase_sign_source", "phase_convention_mismatch"]
    ].tolist() == ["positive", "data", "true"]
    assert "phase_convention_mismatch" in c.loc["sub-flipped", "qc_flags"].split(";")
    assert c.loc[
        "sub-vague", ["paramagnetic_phase", "phase_sign_data", "phase_convention_unconfident"]
    ].tolist() == ["negative", "unconfident", "true"]
    assert (
        c.loc["sub-agrees", "phase_convention_mismatch"] == "false"
        and c.loc["sub-agrees", "qc_flags"] == "n/a"
    )
    assert c.loc["sub-nophase", "phase_convention_mismatch"] == "n/a"
