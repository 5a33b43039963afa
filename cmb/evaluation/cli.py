"""The evaluation command: ``python -m cmb.evaluation`` and ``cmb evaluate`` (``docs/evaluation.md``).

python -m cmb.evaluation --derivatives OUT --truth BIDS/derivatives/cmb-truth --out OUT/evaluation
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from cmb.annotations import derivative_scans, find_scans, is_nifti
from cmb.atomic import write_text
from cmb.evaluation.froc import choose_threshold, froc_curve
from cmb.evaluation.io import recorded_threshold, write_evaluation
from cmb.evaluation.matching import MARGIN_MM, MIN_POINT_RADIUS_MM, match_cohort, read_detections
from cmb.evaluation.truth import load_truth
from cmb.verdicts import find_verdict_files, read_verdicts, reviewer_agreement

__all__ = ["build_parser", "run", "main"]


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the evaluation command (also usable as a ``cmb evaluate`` subparser)."""
    p = parser or argparse.ArgumentParser(
        prog="python -m cmb.evaluation",
        description="Lesion-level evaluation of CMB detections against ground truth (docs/evaluation.md).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--detections", type=Path, help="folder of per-scan detection TSVs (named by sub/ses/run)"
    )
    src.add_argument(
        "--derivatives",
        type=Path,
        help="a cmb workflow output folder: each scan's table (--table-suffix) is paired with the truth "
        "of the raw input its ingest report names",
    )
    p.add_argument(
        "--table-suffix",
        default="desc-candidates_cmb.tsv",
        help="with --derivatives: the per-scan table to score (default: %(default)s); "
        "rows with rejected=true are left out",
    )
    p.add_argument(
        "--truth",
        required=True,
        type=Path,
        help="ground-truth derivatives folder (e.g. <bids>/derivatives/cmb-truth)",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--pattern",
        default="*detections.tsv",
        help="glob of detection files (default: %(default)s)",
    )
    thr = p.add_mutually_exclusive_group()
    thr.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="confidence threshold (>= kept); default: the one the detect stage recorded for these "
        "scans (its *_desc-candidates_cmb.json), else 0.5",
    )
    thr.add_argument(
        "--choose-threshold",
        choices=["f1"],
        default=None,
        help="use the F1-optimal threshold of this cohort's FROC (optimistic: tuned on the test set)",
    )
    thr.add_argument(
        "--target-sensitivity",
        type=float,
        default=None,
        help="use the highest threshold reaching this sensitivity on this cohort",
    )
    p.add_argument(
        "--missing-as-empty",
        action="store_true",
        help="score scans without a detection file as having no detections (default: error)",
    )
    p.add_argument(
        "--binary-masks",
        action="store_true",
        help="truth images are binary masks: one CMB per 26-connected component (sibling tables ignored)",
    )
    p.add_argument("--margin-mm", type=float, default=MARGIN_MM)
    p.add_argument("--min-point-radius-mm", type=float, default=MIN_POINT_RADIUS_MM)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the evaluation command; returns the exit code (2: bad input, one line on stderr)."""
    prog = "cmb evaluate"
    try:
        if args.derivatives is not None:
            scans, unmatched = derivative_scans(args.derivatives, args.truth, args.table_suffix)
        else:
            scans, unmatched = find_scans(args.detections, args.truth, args.pattern)
        if not scans:
            raise ValueError(f"no *_label-CMB_dseg.* ground truth under {args.truth}")
        missing = [s for s, _, d, _ in scans if d is None]
        if missing and not args.missing_as_empty:
            raise ValueError(
                f"no detection file for {len(missing)} scan(s): {', '.join(missing[:10])}"
                " (use --missing-as-empty to score them as empty)"
            )
        pairs = [
            (
                s,
                a,
                None if d is None else read_detections(d),
                load_truth(t, split_components=args.binary_masks and is_nifti(t)),
            )
            for s, a, d, t in scans
        ]
        match = match_cohort(
            pairs, margin_mm=args.margin_mm, min_point_radius_mm=args.min_point_radius_mm
        )
        if args.choose_threshold or args.target_sensitivity is not None:
            threshold = choose_threshold(froc_curve(match), args.target_sensitivity)
        else:
            threshold = args.threshold
            if threshold is None:
                recorded = recorded_threshold(d for _, _, d, _ in scans)
                threshold = 0.5 if recorded is None else recorded
        paths = write_evaluation(args.out, match, threshold)
        agreement = _write_reviewer_agreement(args.truth, args.out)
    except (ValueError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    for f in unmatched:
        print(f"{prog}: warning: no ground truth for {f}", file=sys.stderr)
    cohort = json.loads(paths["cohort.json"].read_text())
    print(
        f"{cohort['n_subjects']} scans, {cohort['n_truth']} CMBs, threshold {threshold:.4g}: "
        f"sensitivity {cohort['sensitivity']}, precision {cohort['precision']}, F1 {cohort['f1']}, "
        f"FPavg {cohort['fp_avg']}; outputs in {args.out}"
    )
    for r in agreement.itertuples():
        print(
            f"reviewers {r.reviewer_a} and {r.reviewer_b}: {r.n_scans} scans, {r.n_candidates} candidates, "
            f"agreement {r.agreement:.3f}, kappa {r.kappa:.3f} (reviewers.csv)"
        )
    return 0


def _write_reviewer_agreement(truth_dir, out_dir) -> pd.DataFrame:
    """``reviewers.csv`` (:func:`cmb.verdicts.reviewer_agreement`) when scans have verdicts of two or more reviewers."""
    scans = {
        k: [read_verdicts(p) for p in v]
        for k, v in find_verdict_files(truth_dir).items()
        if len(v) > 1
    }
    table = reviewer_agreement(scans)
    if len(table):
        write_text(Path(out_dir) / "reviewers.csv", table.to_csv(index=False))
    return table


def main(argv=None) -> int:
    """``python -m cmb.evaluation``: see :func:`build_parser`."""
    return run(build_parser().parse_args(argv))
