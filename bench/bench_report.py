"""Benchmark: cohort tables + cohort report from synthetic per-subject tables, and one
subject report.

    python bench/bench_report.py --n-subjects 1000 [--subject-dir OUT --subject 01]

The synthetic cohort is what :mod:`cmb.localize` writes per subject (detections TSV,
sidecar JSON) and the status records of every stage: counts drawn from the
population profile of ``cmb synth`` (40% none, 42% 1-3, 12% 4-9, 6% 10-30),
candidates at 3-10x the CMBs, regions by the mixed MARS prior, 3 sites, 2 scanners,
2% of the scans failed at a random stage, one with an extreme count. Targets
(issue 5): cohort report + CSVs for 1,000 subjects <= 2 min; a subject report <= 10 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmb.atomic import write_json  # noqa: E402
from cmb.cohort_tables import SubjectFiles, write_cohort_tables  # noqa: E402
from cmb.localize import format_detections, write_table  # noqa: E402
from cmb.mars_region import CATEGORY, REGIONS  # noqa: E402
from cmb.report import render_cohort_report  # noqa: E402

STAGES = (
    "ingest",
    "preprocess",
    "register",
    "detect",
    "localize",
    "plot_brain_mask",
    "plot_registration",
)
SCANNERS = (
    {"Manufacturer": "Siemens", "ManufacturersModelName": "Prisma", "MagneticFieldStrength": 3},
    {
        "Manufacturer": "GE",
        "ManufacturersModelName": "Discovery MR750",
        "MagneticFieldStrength": 1.5,
    },
)


def synthetic_cohort(
    root: Path, n: int, seed: int = 0, fail_fraction: float = 0.02
) -> list[SubjectFiles]:
    """Write ``n`` subjects' detections tables, sidecars and status records under ``root``."""
    rng = np.random.default_rng(seed)
    weights = {"lobar": 0.5, "deep": 0.35, "infratentorial": 0.15}
    by_cat = {c: [r for r in REGIONS if CATEGORY[r] == c] for c in weights}
    subjects = []
    for s in range(1, n + 1):
        pid = f"sub-{s:04d}"
        d = root / pid
        d.mkdir(parents=True, exist_ok=True)
        u = rng.random()
        n_cmb = (
            0
            if u < 0.4
            else int(rng.integers(1, 4))
            if u < 0.82
            else int(rng.integers(4, 10))
            if u < 0.94
            else int(rng.integers(10, 31))
        )
        if s == 7:
            n_cmb = 80  # an extreme count
        n_cand = n_cmb + int(rng.integers(2 * n_cmb + 2, 9 * n_cmb + 6))
        failed_stage = (
            STAGES[int(rng.integers(len(STAGES)))] if rng.random() < fail_fraction else None
        )
        records = []
        for st in STAGES:
            rec = d / f"{st}_status.json"
            if failed_stage is None or STAGES.index(st) < STAGES.index(failed_stage):
                write_json(rec, {"status": "ok", "stage": st, "participant_id": pid})
            elif st == failed_stage:
                write_json(
                    rec,
                    {
                        "status": "failed",
                        "stage": st,
                        "participant_id": pid,
                        "error_class": "RuntimeError",
                        "message": f"synthetic failure in {st}",
                    },
                )
            else:
                write_json(
                    rec,
                    {
                        "status": "skipped",
                        "stage": st,
                        "participant_id": pid,
                        "upstream_stage": failed_stage,
                        "message": f"skipped: upstream stage {failed_stage} failed",
                    },
                )
            records.append(rec)
        table = sidecar = None
        if failed_stage not in ("ingest", "preprocess", "detect", "localize"):
            cats = rng.choice(list(weights), size=n_cand, p=list(weights.values()))
            regions = [by_cat[c][int(rng.integers(len(by_cat[c])))] for c in cats]
            conf = np.sort(rng.random(n_cand))[::-1]
            above = np.arange(n_cand) < n_cmb + max(1, n_cand // 10)
            rejected = (np.arange(n_cand) >= n_cmb) & above
            det = pd.DataFrame(
                {
                    "participant_id": pid,
                    "session_id": "n/a",
                    "cmb_id": np.arange(1, n_cand + 1),
                    "confidence": conf,
                    "above_threshold": above,
                    "rejected": rejected,
                    "rejected_reason": np.where(
                        rejected, np.where(rng.random(n_cand) < 0.5, "csf", "outside_brain"), "n/a"
                    ),
                    "x_mm": rng.normal(0, 40, n_cand),
                    "y_mm": rng.normal(0, 50, n_cand),
                    "z_mm": rng.normal(10, 30, n_cand),
                    "i": rng.integers(0, 512, n_cand),
                    "j": rng.integers(0, 448, n_cand),
                    "k": rng.integers(0, 72, n_cand),
                    "mni_x": rng.normal(0, 40, n_cand),
                    "mni_y": rng.normal(-10, 50, n_cand),
                    "mni_z": rng.normal(10, 30, n_cand),
                    "volume_mm3": rng.uniform(4, 300, n_cand),
                    "diameter_mm": rng.uniform(2, 8, n_cand),
                    "mars_category": np.where(rejected, "non-parenchyma", cats),
                    "mars_region": np.where(rejected, "csf", regions),
                    "hemisphere": np.where(
                        rejected, "n/a", np.where(rng.random(n_cand) < 0.5, "L", "R")
                    ),
                    "atlas_label": "Left-Cerebral-White-Matter",
                    "parenchyma_fraction": 1.0,
                    "n_voxels": rng.integers(3, 200, n_cand),
                    "screen_score": rng.random(n_cand),
                    "sphericity": rng.random(n_cand),
                    "phase_mean": rng.normal(0.3, 0.2, n_cand),
                    "phase_sign": "paramagnetic",
                }
            )
            det["is_cmb"] = det["above_threshold"] & ~det["rejected"]
            table, sidecar = (
                d / f"{pid}_desc-cmb_detections.tsv",
                d / f"{pid}_desc-cmb_detections.json",
            )
            write_table(format_detections(det), table)
            write_json(
                sidecar,
                {
                    "Summary": {
                        "anatomy_available": failed_stage != "register",
                        "brain_mask_volume_ml": float(rng.normal(1500, 150)),
                        "registration": {
                            "nmi": float(rng.normal(1.15, 0.03)),
                            "mask_dice": float(rng.normal(0.94, 0.02)),
                        },
                    },
                    "Provenance": {"acquisition": SCANNERS[s % 2]},
                },
            )
        subjects.append(
            SubjectFiles(
                participant_id=pid,
                session_id=None,
                detections=table,
                sidecar=sidecar,
                records=records,
                site=f"site{'ABC'[s % 3]}",
            )
        )
    return subjects


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-subjects", type=int, default=1000)
    p.add_argument(
        "--keep",
        type=Path,
        help="write the synthetic cohort and outputs here (default: a temp folder)",
    )
    args = p.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="cmb-bench-report-"))
    t0 = time.perf_counter()
    subjects = synthetic_cohort(root / "subjects", args.n_subjects)
    t_synth = time.perf_counter() - t0
    t0 = time.perf_counter()
    cohort = root / "cohort"
    counts, det = write_cohort_tables(
        subjects,
        cohort / "cmb_counts.csv",
        cohort / "cmb_detections.csv",
        out_ratings=cohort / "cmb_ratings_template.tsv",
    )
    t_tables = time.perf_counter() - t0
    t0 = time.perf_counter()
    render_cohort_report(
        cohort / "cmb_counts.csv",
        cohort / "cmb_detections.csv",
        cohort / "cmb_report.html",
        out_counts_figure=cohort / "figures" / "counts.svg",
        out_regions_figure=cohort / "figures" / "regions.svg",
    )
    t_report = time.perf_counter() - t0
    result = {
        "n_subjects": args.n_subjects,
        "n_detections": len(det),
        "synthetic_inputs_s": round(t_synth, 2),
        "tables_s": round(t_tables, 2),
        "cohort_report_s": round(t_report, 2),
        "tables_plus_report_s": round(t_tables + t_report, 2),
        "report_mb": round((cohort / "cmb_report.html").stat().st_size / 1e6, 2),
        "folder": str(root),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
