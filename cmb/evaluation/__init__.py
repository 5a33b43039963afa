"""Lesion-level evaluation of CMB detections: matching, metrics, FROC, output files.

Every tool of this project (training validation, benchmarks, ``cmb evaluate``)
scores detections with this package, so that all of them agree.

Modules, by concept (this package re-exports their public names):

- :mod:`cmb.evaluation.truth`: the :class:`Truth` of a scan and its readers
  (:func:`load_truth`, :func:`as_truth`...);
- :mod:`cmb.evaluation.matching`: reading detections and matching them to the truth,
  the matching rule (:func:`match_detections`, :func:`match_cohort`...);
- :mod:`cmb.evaluation.metrics`: the per-subject table and the cohort metrics;
- :mod:`cmb.evaluation.froc`: the FROC curve, sensitivity at fixed FP rates, the
  operating threshold and the plot;
- :mod:`cmb.evaluation.io`: a cohort evaluated at one threshold and the output files;
- :mod:`cmb.evaluation.cli`: ``python -m cmb.evaluation`` / ``cmb evaluate``.

Inputs are plain data: detections are a :class:`pandas.DataFrame`; truth is a
label image (nibabel image, or an array plus affine, optionally with a table of
centres and attributes) or a point table (:func:`as_truth`).
"""

from cmb.evaluation.cli import build_parser, main, run
from cmb.evaluation.froc import (
    FROC_COLUMNS,
    choose_threshold,
    froc_curve,
    plot_froc,
    sensitivity_at_fp,
)
from cmb.evaluation.io import (
    evaluate_cohort,
    recorded_threshold,
    write_cohort,
    write_evaluation,
    write_froc,
    write_subject_csv,
)
from cmb.evaluation.matching import (
    MARGIN_MM,
    MIN_POINT_RADIUS_MM,
    CohortMatch,
    SubjectMatch,
    detection_hits,
    match_cohort,
    match_detections,
    match_subject,
    read_detections,
)
from cmb.evaluation.metrics import (
    LOCATION_COLUMNS,
    SUBJECT_COLUMNS,
    cohort_metrics,
    count_pearson_r,
    metrics_by,
    subject_table,
)
from cmb.evaluation.truth import (
    Truth,
    as_truth,
    load_truth,
    truth_from_labels,
    truth_from_points,
    truth_from_verdicts,
)

__all__ = [
    "MARGIN_MM",
    "MIN_POINT_RADIUS_MM",
    "LOCATION_COLUMNS",
    "SUBJECT_COLUMNS",
    "FROC_COLUMNS",
    "Truth",
    "SubjectMatch",
    "CohortMatch",
    "truth_from_labels",
    "truth_from_points",
    "as_truth",
    "load_truth",
    "truth_from_verdicts",
    "read_detections",
    "detection_hits",
    "match_detections",
    "match_subject",
    "match_cohort",
    "subject_table",
    "count_pearson_r",
    "cohort_metrics",
    "metrics_by",
    "froc_curve",
    "sensitivity_at_fp",
    "choose_threshold",
    "recorded_threshold",
    "evaluate_cohort",
    "write_subject_csv",
    "write_cohort",
    "write_froc",
    "plot_froc",
    "write_evaluation",
    "build_parser",
    "run",
    "main",
]
