"""``python -m cmb.report {subject,cohort}``: write a QC page."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence

from cmb.report.assemble import render_cohort_report, render_subject_report
from cmb.report.viewer import install_viewer

_log = logging.getLogger("cmb.report")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cmb.report", description="Self-contained QC HTML reports."
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("subject", help="one subject/session page")
    s.add_argument("--subject", required=True)
    s.add_argument("--session")
    s.add_argument("--detections", help="desc-cmb_detections.tsv (cmb.localize)")
    s.add_argument("--sidecar", help="desc-cmb_detections.json")
    s.add_argument("--image", help="preprocessed magnitude")
    s.add_argument("--phase", help="preprocessed high-pass phase")
    s.add_argument("--mask", help="brain mask")
    s.add_argument("--mars", help="native MARS dseg")
    s.add_argument(
        "--candidates-dseg", help="candidate label image (unused by the drawing, tracked)"
    )
    s.add_argument("--figure-brain-mask", help="brain-mask QC figure (SVG/PNG)")
    s.add_argument("--figure-registration", help="registration QC figure (SVG/PNG)")
    s.add_argument(
        "--records", nargs="*", default=[], help="status records of the subject's stages, in order"
    )
    s.add_argument("--t1w", help="ingested T1w (an optional viewer layer)")
    s.add_argument(
        "--embed-budget-bytes", type=int, help="largest total of embedded viewer layers (bytes)"
    )
    s.add_argument(
        "--viewer-js",
        help="NiiVue as installed by 'python -m cmb.report viewer' (adds the Review section)",
    )
    s.add_argument("--out", required=True)
    v = sub.add_parser(
        "viewer", help="write the vendored NiiVue viewer (script, licence) into a folder"
    )
    v.add_argument("--out", required=True, help="folder, e.g. <output_dir>/viewer")
    c = sub.add_parser("cohort", help="the cohort page")
    c.add_argument("--counts", required=True, help="cohort/cmb_counts.csv")
    c.add_argument("--detections", required=True, help="cohort/cmb_detections.csv")
    c.add_argument("--failures", help="failures.csv")
    c.add_argument("--out", required=True)
    c.add_argument("--out-counts-figure")
    c.add_argument("--out-regions-figure")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "subject":
        t = render_subject_report(
            participant_id=args.subject,
            session_id=args.session,
            out=args.out,
            detections=args.detections,
            sidecar=args.sidecar,
            image=args.image,
            phase=args.phase,
            mask=args.mask,
            mars=args.mars,
            candidates_dseg=args.candidates_dseg,
            figure_brain_mask=args.figure_brain_mask,
            figure_registration=args.figure_registration,
            records=args.records,
            t1w=args.t1w,
            viewer_js=args.viewer_js,
            embed_budget_bytes=args.embed_budget_bytes,
        )
    elif args.command == "viewer":
        _log.info("wrote %s", install_viewer(args.out))
        return 0
    else:
        t = render_cohort_report(
            args.counts,
            args.detections,
            args.out,
            failures_csv=args.failures,
            out_counts_figure=args.out_counts_figure,
            out_regions_figure=args.out_regions_figure,
        )
    _log.info("wrote %s; timings %s", args.out, json.dumps({k: round(v, 3) for k, v in t.items()}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
