"""Lesion-level evaluation: hand-built cases with known TP, FP and FN."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cmb.evaluation import (
    choose_threshold,
    cohort_metrics,
    count_pearson_r,
    evaluate_cohort,
    froc_curve,
    load_truth,
    main,
    match_cohort,
    match_detections,
    match_subject,
    metrics_by,
    read_detections,
    recorded_threshold,
    sensitivity_at_fp,
    subject_table,
    truth_from_labels,
    truth_from_points,
    write_evaluation,
)

# 0.5 x 0.5 x 2 mm voxels (SWI-like): 2 mm is 4 voxels in-plane and 1 slice.
# Voxel (15, 15, 6) is at scanner (0, 0, 0).
ANISO = np.diag([0.5, 0.5, 2.0, 1.0])
ANISO[:3, 3] = [-7.5, -7.5, -12.0]
SHAPE = (30, 30, 12)


def dets(*rows, ids=None, **columns):
    """Detections from ``(x, y, z, confidence)`` rows."""
    df = pd.DataFrame(rows, columns=["x_mm", "y_mm", "z_mm", "confidence"], dtype=float)
    if ids is not None:
        df["id"] = ids
    for name, values in columns.items():
        df[name] = values
    return df


def points(*rows, **columns):
    """Point truth from ``(x, y, z)`` or ``(x, y, z, radius)`` rows."""
    cols = (
        ["x_mm", "y_mm", "z_mm", "radius_mm"][: len(rows[0])] if rows else ["x_mm", "y_mm", "z_mm"]
    )
    df = pd.DataFrame(rows, columns=cols, dtype=float)
    for name, values in columns.items():
        df[name] = values
    return df


def labels(*voxels, shape=SHAPE):
    """Label image with CMB ``n`` (1-based) at each voxel (or list of voxels) given."""
    lab = np.zeros(shape, dtype=np.int16)
    for n, vox in enumerate(voxels, start=1):
        for v in vox if isinstance(vox, list) else [vox]:
            lab[v] = n
    return lab


def one(detection_xyz, truth, conf=0.9):
    return match_subject(dets((*detection_xyz, conf)), truth)


# ------------------------------------------------------------------ mask matching
@pytest.mark.parametrize(
    "xyz, is_tp",
    [
        ((2.0, 0.0, 0.0), True),  # 4 voxels in-plane
        ((0.0, -2.0, 0.0), True),
        ((2.5, 0.0, 0.0), False),  # 5 voxels in-plane (though within the 3 mm point rule)
        ((0.0, 0.0, 2.0), True),  # 1 slice
        ((0.0, 0.0, -4.0), False),  # 2 slices (voxel iterations would reach it)
        ((1.0, 1.5, 0.0), True),  # Euclidean 1.80 mm (5 voxels by city-block)
        ((1.5, 1.5, 0.0), False),  # Euclidean 2.12 mm
        ((2.0, 0.0, 2.0), False),  # 2.83 mm
        ((2.2, 0.0, 0.0), True),  # centroid in voxel 19, whose centre is 2.0 mm away
    ],
)
def test_mask_dilation_is_2mm_on_anisotropic_grid(xyz, is_tp):
    m = one(xyz, (labels((15, 15, 6)), ANISO))
    assert (m.tp, m.fp, m.fn) == ((1, 0, 0) if is_tp else (0, 1, 1))


def test_dilation_grows_from_the_mask_boundary_not_the_centre():
    truth = (labels([(i, 15, 6) for i in (14, 15, 16)]), ANISO)  # x = -0.5 .. 0.5 mm
    assert one((2.5, 0.0, 0.0), truth).tp == 1  # 2.0 mm from the edge voxel, 2.5 from the centre
    assert one((3.0, 0.0, 0.0), truth).tp == 0


def test_mask_matching_uses_the_affine():
    lps = np.diag([-0.5, 0.5, 2.0, 1.0])
    lps[:3, 3] = [7.5, -7.5, -12.0]  # voxel (19, 15, 6) is at x = -2.0 mm
    truth = (labels((19, 15, 6)), lps)
    assert one((-2.0, 0.0, 0.0), truth).tp == 1
    assert one((2.0, 0.0, 0.0), truth).tp == 0  # where it would be without the flip


def test_dilation_extends_past_the_image_edge():
    truth = (labels((0, 15, 6)), ANISO)  # x = -7.5 mm, first column of the grid
    assert one((-9.5, 0.0, 0.0), truth).tp == 1  # 4 voxels outside the image
    assert one((-10.0, 0.0, 0.0), truth).tp == 0


def test_nifti_image_and_array_plus_affine_agree():
    img = nib.Nifti1Image(labels((15, 15, 6)), ANISO)
    assert one((2.0, 0.0, 0.0), img).tp == 1 and one((2.5, 0.0, 0.0), img).tp == 0


def test_label_centroid_is_the_centre_without_table():
    t = truth_from_labels(labels([(14, 15, 6), (16, 15, 6), (15, 17, 6)]), ANISO)
    assert np.allclose(t.table[["x_mm", "y_mm", "z_mm"]].to_numpy(), [[0.0, 1.0 / 3, 0.0]])


def test_table_centre_replaces_the_label_centroid():
    table = pd.DataFrame({"index": [1], "x_mm": [0.25], "y_mm": [0.0], "z_mm": [0.0]})
    m = one((0.0, 0.0, 0.0), (labels((15, 15, 6)), ANISO, table))
    assert m.pairs["distance_mm"].tolist() == [0.25]


def test_table_row_without_voxels_uses_the_point_rule():
    table = pd.DataFrame(
        {
            "index": [1, 2],
            "x_mm": [0.0, -5.0],
            "y_mm": [0.0, 0.0],
            "z_mm": [0.0, 0.0],
            "radius_mm": [0.5, 1.0],
        }
    )
    truth = truth_from_labels(labels((15, 15, 6)), ANISO, table)
    assert truth.table["has_mask"].tolist() == [True, False]
    m = match_subject(dets((-7.9, 0.0, 0.0, 0.9), (-8.1, 0.1, 0.0, 0.8)), truth)
    assert m.pairs["truth_id"].tolist() == [2] and m.tp == 1 and m.fp == 1


def test_load_truth_reads_the_sibling_table(tmp_path):
    nib.save(nib.Nifti1Image(labels((15, 15, 6)), ANISO), tmp_path / "sub-1_label-CMB_dseg.nii.gz")
    pd.DataFrame(
        {"index": [1], "x_mm": [0.1], "y_mm": [0.0], "z_mm": [0.0], "mars_region": ["frontal"]}
    ).to_csv(tmp_path / "sub-1_label-CMB_dseg.tsv", sep="\t", index=False)
    t = load_truth(tmp_path / "sub-1_label-CMB_dseg.nii.gz")
    assert t.table["x_mm"].tolist() == [0.1] and t.table["mars_region"].tolist() == ["frontal"]
    assert t.table["has_mask"].tolist() == [True]


# ----------------------------------------------------------------- point matching
@pytest.mark.parametrize(
    "radius, distance, is_tp",
    [
        (None, 2.9, True),
        (None, 3.1, False),  # no radius: 3 mm
        (0.5, 3.1, False),  # max(3, 2.5) = 3
        (1.5, 3.4, True),
        (1.5, 3.6, False),  # 3.5 mm
        (2.0, 3.9, True),
        (2.0, 4.1, False),  # 4 mm
    ],
)
def test_point_rule_is_max_3mm_or_radius_plus_2mm(radius, distance, is_tp):
    truth = points((0.0, 0.0, 0.0)) if radius is None else points((0.0, 0.0, 0.0, radius))
    m = one((0.0, distance * 0.6, distance * 0.8), truth)
    assert m.tp == int(is_tp)


# ------------------------------------------------------------------ greedy order
@pytest.mark.parametrize("conf, winner", [((0.6, 0.9), 1), ((0.9, 0.6), 0)])
def test_two_detections_on_one_cmb_higher_confidence_wins(conf, winner):
    m = match_subject(
        dets((0.5, 0.0, 0.0, conf[0]), (2.0, 0.0, 0.0, conf[1])), points((0.0, 0.0, 0.0))
    )
    assert (m.tp, m.fp, m.fn) == (1, 1, 0)
    assert m.pairs["detection_id"].tolist() == [winner]


def test_confidence_ties_go_to_the_earlier_row():
    m = match_subject(
        dets((2.0, 0.0, 0.0, 0.5), (0.0, 0.0, 0.0, 0.5), ids=["far", "near"]),
        points((0.0, 0.0, 0.0)),
    )
    assert m.pairs["detection_id"].tolist() == ["far"]


def test_detection_between_two_cmbs_takes_the_nearest():
    m = match_subject(dets((2.5, 0.0, 0.0, 0.9)), points((0.0, 0.0, 0.0), (4.0, 0.0, 0.0)))
    assert m.pairs["truth_id"].tolist() == [2] and (m.tp, m.fp, m.fn) == (1, 0, 1)


def test_detection_between_two_cmbs_takes_the_one_left_unmatched():
    d = dets((2.5, 0.0, 0.0, 0.5), (4.0, 0.0, 0.0, 0.9), ids=[10, 20])
    m = match_subject(d, points((0.0, 0.0, 0.0), (4.0, 0.0, 0.0)))
    assert m.pairs[["truth_id", "detection_id"]].values.tolist() == [[1, 10], [2, 20]]


def test_detection_between_two_masks_takes_the_nearest_centre():
    truth = (labels((15, 15, 6), (21, 15, 6)), ANISO)  # centres at x = 0 and x = 3 mm
    assert one((1.0, 0.0, 0.0), truth).pairs["truth_id"].tolist() == [1]
    assert one((2.0, 0.0, 0.0), truth).pairs["truth_id"].tolist() == [2]


def test_each_cmb_is_matched_at_most_once():
    d = dets(*[(0.1 * k, 0.0, 0.0, 0.9 - 0.1 * k) for k in range(5)])
    m = match_subject(d, points((0.0, 0.0, 0.0)))
    assert (m.tp, m.fp, m.fn) == (1, 4, 0)


def test_match_detections_keeps_input_order_and_ids():
    out = match_detections(
        dets((50.0, 0.0, 0.0, 0.2), (0.0, 0.0, 0.0, 0.1), ids=[7, 3]), points((0.0, 0.0, 0.0))
    )
    assert out["detection_id"].tolist() == [7, 3]
    assert out["truth_id"].isna().tolist() == [True, False]


# ---------------------------------------------------------------- empty subjects
def test_no_truth_no_detections():
    m = match_subject(None, points())
    ps, cohort = evaluate_cohort([("sub-1", "swi", None, points())])
    assert (m.tp, m.fp, m.fn) == (0, 0, 0)
    assert math.isnan(ps["sensitivity"].iat[0]) and math.isnan(cohort["sensitivity"])


def test_detections_without_truth_are_all_false_positives():
    m = match_subject(dets((0.0, 0.0, 0.0, 0.9), (5.0, 0.0, 0.0, 0.8)), (labels(), ANISO))
    assert (m.tp, m.fp, m.fn) == (0, 2, 0)


def test_truth_without_detections_is_all_false_negatives():
    m = match_subject(
        pd.DataFrame(columns=["x_mm", "y_mm", "z_mm", "confidence"]), points((0, 0, 0), (9, 0, 0))
    )
    assert (m.tp, m.fp, m.fn) == (0, 0, 2)


def test_empty_subjects_count_in_fp_avg():
    truth = points((0.0, 0.0, 0.0))
    _, cohort = evaluate_cohort(
        [("sub-1", "swi", dets((40.0, 0.0, 0.0, 0.9)), truth), ("sub-2", "swi", None, points())]
    )
    assert cohort["fp_avg"] == 0.5 and cohort["n_subjects"] == 2


# ----------------------------------------------------------------- thresholds
def test_detections_below_threshold_are_ignored():
    m = match_subject(
        dets((0.0, 0.0, 0.0, 0.3), (40.0, 0.0, 0.0, 0.4)), points((0.0, 0.0, 0.0)), threshold=0.5
    )
    assert (m.tp, m.fp, m.fn) == (0, 0, 1)


def test_detection_at_threshold_is_kept():
    m = match_subject(dets((0.0, 0.0, 0.0, 0.5)), points((0.0, 0.0, 0.0)), threshold=0.5)
    assert m.tp == 1


def test_threshold_equals_matching_only_the_kept_detections():
    d = dets(
        (2.5, 0.0, 0.0, 0.4), (4.0, 0.0, 0.0, 0.3), (2.4, 0.0, 0.0, 0.2), (30.0, 0.0, 0.0, 0.35)
    )
    truth = points((0.0, 0.0, 0.0), (4.0, 0.0, 0.0))
    for t in (0.2, 0.3, 0.35, 0.4):
        a = match_subject(d, truth, threshold=t)
        b = match_subject(d[d["confidence"] >= t], truth)
        assert a.pairs.equals(b.pairs) and a.fp == b.fp


# ----------------------------------------------------------------- cohort metrics
def _cohort():
    """3 scans, 4 CMBs, 6 detections; two acquisitions."""
    return match_cohort(
        [
            (
                "sub-1",
                "swi",
                dets((0, 0, 0, 0.9), (20, 0, 0, 0.8), (40, 0, 0, 0.3)),
                points((0, 0, 0), (20, 0, 0)),
            ),
            ("sub-2", "gre", dets((50, 0, 0, 0.7), (1, 0, 0, 0.6)), points((0, 0, 0))),
            ("sub-3", "gre", dets((9, 9, 9, 0.4)), points((5, 5, 5))),
        ]
    )


def test_cohort_counts_and_rates():
    ps = subject_table(_cohort(), threshold=0.5)
    c = cohort_metrics(ps)
    assert ps[["tp", "fp", "fn"]].values.tolist() == [[2, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert (c["tp"], c["fp"], c["fn"], c["n_truth"], c["n_detections"]) == (3, 1, 1, 4, 4)
    assert (c["sensitivity"], c["precision"], c["f1"]) == (0.75, 0.75, 0.75)
    assert (c["fp_avg"], c["fp_cmb"]) == (1 / 3, 0.25)


def test_count_error_and_mae():
    ps = subject_table(_cohort(), threshold=0.5)  # detected 2, 2, 0 vs true 2, 1, 1
    assert ps["count_error"].tolist() == [0, 1, -1] and cohort_metrics(ps)["count_mae"] == 2 / 3


def test_pearson_r_known_values():
    assert count_pearson_r([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert count_pearson_r([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert count_pearson_r([1, 3, 2, 4], [1, 2, 3, 4]) == pytest.approx(0.8)


def test_pearson_r_of_the_per_subject_counts():
    ps = subject_table(_cohort(), threshold=0.5)
    assert cohort_metrics(ps)["count_pearson_r"] == pytest.approx(
        np.corrcoef([2, 2, 0], [2, 1, 1])[0, 1]
    )


def test_pearson_r_is_nan_with_a_note_on_zero_variance():
    _, c = evaluate_cohort([(f"sub-{i}", "swi", None, points((0, 0, i))) for i in range(3)])
    assert math.isnan(c["count_pearson_r"]) and any("count_pearson_r" in n for n in c["notes"])


def test_per_acquisition_breakdown():
    ps = subject_table(_cohort(), threshold=0.5)
    c = cohort_metrics(ps)
    assert c["by_acquisition"]["swi"]["sensitivity"] == 1.0
    assert (
        c["by_acquisition"]["gre"]["sensitivity"] == 0.5
        and c["by_acquisition"]["gre"]["fp_avg"] == 0.5
    )
    assert metrics_by(ps)["acquisition"].tolist() == ["gre", "swi"]


def test_localization_accuracy_counts_true_positives_only():
    d = dets(
        (0, 0, 0, 0.9),
        (20, 0, 0, 0.8),
        (60, 0, 0, 0.7),
        mars_region=["Frontal", "putamen", "frontal"],
    )
    truth = points((0, 0, 0), (20, 0, 0), mars_region=["frontal", "thalamus"])
    ps, c = evaluate_cohort([("sub-1", "swi", d, truth)])
    assert ps[["mars_region_evaluated", "mars_region_correct"]].values.tolist() == [[2, 1]]
    assert c["mars_region_accuracy"] == 0.5 and "mars_category_accuracy" not in c


# -------------------------------------------------------------------------- FROC
def test_froc_endpoints():
    froc = froc_curve(_cohort())
    first, last = froc.iloc[0], froc.iloc[-1]
    assert first["threshold"] == np.inf and (first["sensitivity"], first["fp_avg"]) == (0.0, 0.0)
    assert last["threshold"] == 0.3 and (last["tp"], last["fp"]) == (3, 3)


def test_froc_is_monotone():
    froc = froc_curve(_cohort())
    assert np.all(np.diff(froc["threshold"]) < 0)
    assert np.all(np.diff(froc["sensitivity"]) >= 0) and np.all(np.diff(froc["fp_avg"]) >= 0)
    assert len(froc) == 1 + 6


def test_froc_rows_equal_the_metrics_at_their_threshold():
    match = _cohort()
    for row in froc_curve(match).iloc[1:].itertuples():
        c = cohort_metrics(subject_table(match, row.threshold))
        assert (row.sensitivity, row.fp_avg, row.precision, row.f1) == pytest.approx(
            (c["sensitivity"], c["fp_avg"], c["precision"], c["f1"])
        )


def test_froc_merges_tied_confidences():
    match = match_cohort([("s", "a", dets((0, 0, 0, 0.5), (9, 9, 9, 0.5)), points((0, 0, 0)))])
    assert froc_curve(match)["threshold"].tolist() == [np.inf, 0.5]


def test_f1_optimal_threshold():
    # F1 by threshold: 0.9 -> 2/3, 0.8 -> 1/2, 0.7 -> 4/5, 0.6 -> 2/3
    d = dets((0, 0, 0, 0.9), (30, 0, 0, 0.8), (10, 0, 0, 0.7), (50, 0, 0, 0.6))
    froc = froc_curve(match_cohort([("s", "a", d, points((0, 0, 0), (10, 0, 0)))]))
    assert froc["f1"].tolist()[1:] == pytest.approx([2 / 3, 1 / 2, 4 / 5, 2 / 3])
    assert choose_threshold(froc) == 0.7


def test_f1_ties_go_to_the_higher_threshold():
    froc = pd.DataFrame(
        {
            "threshold": [np.inf, 0.8, 0.5, 0.3],
            "sensitivity": [0, 0.5, 1, 1],
            "f1": [0, 0.7, 0.7, 0.6],
        }
    )
    assert choose_threshold(froc) == 0.8


def test_threshold_for_target_sensitivity():
    froc = pd.DataFrame(
        {"threshold": [np.inf, 0.8, 0.5, 0.3], "sensitivity": [0, 0.5, 0.9, 1], "f1": [0] * 4}
    )
    assert choose_threshold(froc, target_sensitivity=0.9) == 0.5
    with pytest.raises(ValueError, match="reaches sensitivity"):
        choose_threshold(froc, target_sensitivity=1.01)


def test_threshold_for_a_false_positive_budget():
    # 2 scans; FPs at 0.7 and 0.4 (FPavg 0.5 from 0.7 down, 1.0 from 0.4 down)
    d1 = dets((0, 0, 0, 0.9), (30, 0, 0, 0.7), (10, 0, 0, 0.5))
    d2 = dets((0, 0, 0, 0.6), (40, 0, 0, 0.4), (10, 0, 0, 0.3))
    froc = froc_curve(
        match_cohort(
            [
                ("s1", "a", d1, points((0, 0, 0), (10, 0, 0))),
                ("s2", "a", d2, points((0, 0, 0), (10, 0, 0))),
            ]
        )
    )
    assert choose_threshold(froc, max_fp_avg=0.5) == 0.5  # every TP above 0.4, one FP
    assert choose_threshold(froc, max_fp_avg=1.0) == 0.3
    assert choose_threshold(froc, max_fp_avg=0.0) == 0.9
    with pytest.raises(ValueError, match="not both"):
        choose_threshold(froc, target_sensitivity=0.5, max_fp_avg=1.0)


def test_the_detect_stage_threshold_is_the_default(tmp_path):
    tables = []
    for sub, thr in (("sub-01", 0.28), ("sub-02_ses-01", 0.28)):
        (tmp_path / f"{sub}_desc-candidates_cmb.json").write_text(json.dumps({"threshold": thr}))
        tables.append(
            tmp_path / f"{sub}_desc-cmb_detections.tsv"
        )  # the localize table: same scan prefix
    assert recorded_threshold(tables + [None]) == 0.28
    (tmp_path / "sub-02_ses-01_desc-candidates_cmb.json").write_text(json.dumps({"threshold": 0.5}))
    with pytest.raises(ValueError, match="2 different thresholds"):
        recorded_threshold(tables)
    assert recorded_threshold([tmp_path / "other_tool.tsv"]) is None


# ------------------------------------------------------------------------ writers
def test_write_evaluation_outputs(tmp_path):
    paths = write_evaluation(tmp_path / "eval", _cohort(), threshold=0.5)
    cohort = json.loads(paths["cohort.json"].read_text())
    assert (cohort["n_subjects"], cohort["n_truth"], cohort["n_detections"]) == (3, 4, 4)
    assert cohort["sensitivity"] == 0.75 and cohort["by_acquisition"]["gre"]["n_subjects"] == 2
    assert pd.read_csv(paths["cohort.csv"])["group"].tolist() == [
        "all",
        "acquisition=gre",
        "acquisition=swi",
    ]
    assert pd.read_csv(paths["subjects.csv"])["tp"].tolist() == [2, 1, 0]
    froc = pd.read_csv(paths["froc.csv"])
    assert list(froc.columns[:5]) == ["threshold", "sensitivity", "fp_avg", "precision", "f1"]
    assert froc["threshold"].iat[0] == np.inf
    assert paths["froc.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pd.read_csv(paths["detections.csv"])["kept"].sum() == 4
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == sorted(
        paths
    )  # no temporary files left


def test_json_writes_nan_as_null(tmp_path):
    match = match_cohort([("s", "a", None, points())])
    cohort = json.loads(write_evaluation(tmp_path, match, 0.5)["cohort.json"].read_text())
    assert cohort["sensitivity"] is None and cohort["notes"]


# -------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "bad, message",
    [
        (pd.DataFrame({"x_mm": [0.0], "y_mm": [0.0], "z_mm": [0.0]}), "confidence"),
        (dets((0, 0, 0, np.nan)), "finite"),
        (dets((0, 0, 0, 0.5), (1, 0, 0, 0.5), ids=[1, 1]), "unique"),
    ],
)
def test_bad_detections(bad, message):
    with pytest.raises(ValueError, match=message):
        match_detections(bad, points((0, 0, 0)))


def test_label_array_needs_an_affine():
    with pytest.raises(ValueError, match="affine"):
        truth_from_labels(labels((1, 1, 1)))


def test_non_integer_labels_are_refused():
    with pytest.raises(ValueError, match="integer"):
        truth_from_labels(np.full((3, 3, 3), 0.5), np.eye(4))


def test_duplicate_truth_ids_are_refused():
    with pytest.raises(ValueError, match="unique"):
        truth_from_points(points((0, 0, 0), (5, 0, 0), index=[1, 1]))


def test_empty_detection_file_is_a_failed_stage(tmp_path):
    (tmp_path / "d.tsv").write_text("")
    with pytest.raises(ValueError, match="placeholder"):
        read_detections(tmp_path / "d.tsv")


# ---------------------------------------------------------------------------- CLI
def _write_cli_inputs(root):
    truth = root / "truth" / "sub-01" / "anat"
    truth.mkdir(parents=True)
    nib.save(nib.Nifti1Image(labels((15, 15, 6)), ANISO), truth / "sub-01_label-CMB_dseg.nii.gz")
    pd.DataFrame(
        {"index": [1], "x_mm": [0.0], "y_mm": [0.0], "z_mm": [0.0], "radius_mm": [0.4]}
    ).to_csv(truth / "sub-01_label-CMB_dseg.tsv", sep="\t", index=False)
    (truth / "sub-01_synth.json").write_text(json.dumps({"preset": "swi-3t"}))
    truth2 = root / "truth" / "sub-02" / "anat"
    truth2.mkdir(parents=True)
    points((0, 0, 0)).to_csv(truth2 / "sub-02_label-CMB_dseg.tsv", sep="\t", index=False)
    det = root / "det"
    det.mkdir()
    dets((2.0, 0, 0, 0.8), (30, 0, 0, 0.6)).to_csv(
        det / "sub-01_desc-cmb_detections.tsv", sep="\t", index=False
    )
    return det / "sub-02_desc-cmb_detections.tsv"


def test_cli_evaluates_a_folder(tmp_path, capsys):
    dets((2.9, 0, 0, 0.9)).to_csv(_write_cli_inputs(tmp_path), sep="\t", index=False)
    rc = main(
        [
            "--detections",
            str(tmp_path / "det"),
            "--truth",
            str(tmp_path / "truth"),
            "--out",
            str(tmp_path / "out"),
            "--threshold",
            "0.5",
        ]
    )
    cohort = json.loads((tmp_path / "out" / "cohort.json").read_text())
    assert rc == 0 and (cohort["tp"], cohort["fp"], cohort["fn"]) == (2, 1, 0)
    assert set(cohort["by_acquisition"]) == {"swi-3t", "unknown"}


def test_cli_refuses_missing_detections(tmp_path, capsys):
    _write_cli_inputs(tmp_path)
    rc = main(
        [
            "--detections",
            str(tmp_path / "det"),
            "--truth",
            str(tmp_path / "truth"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "sub-02" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_sensitivity_at_fp_levels():
    froc = froc_curve(_cohort())  # sensitivity 0.5 at 0 FP (threshold 0.8), 0.75 at 1/3 FP (0.6)
    out = sensitivity_at_fp(froc, [0.0, 0.3, 1.0])
    assert out["sensitivity"].tolist() == [0.5, 0.5, 0.75] and out["threshold"].tolist() == [
        0.8,
        0.8,
        0.6,
    ]


def test_binary_mask_split_into_connected_components():
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[5, 5, 5] = mask[6, 6, 6] = 1  # diagonal neighbours: one 26-connected CMB
    mask[20, 20, 6] = 1
    t = truth_from_labels(mask, ANISO, split_components=True)
    assert t.table["truth_id"].tolist() == [1, 2]
    assert t.labels[5, 5, 5] == t.labels[6, 6, 6] == 1 and t.labels[20, 20, 6] == 2
