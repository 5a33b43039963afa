"""Detector accuracy on a held-out annotated cohort, with the ablations, and detect-stage speed.

    # held-out cohort: seeds never used in training, run through the workflow up to preprocessing
    cmb synth --out /data/heldout --preset mixed --n-subjects 20 --seed 9000 --count-profile enriched
    snakemake --profile profiles/local preprocessed_all --config bids_dir=/data/heldout output_dir=/data/heldout-out
    python bench/bench_detect.py --derivatives /data/heldout-out --truth /data/heldout/derivatives/cmb-truth \\
        --out /data/heldout-eval

Conditions (one table row each):

- ``full``: the shipped model, magnitude + phase where present, at the model card's threshold;
- ``no-phase``: the same model given the magnitude only;
- ``screen-only`` (no stage 2): every screen candidate kept as a detection (its
  sensitivity is stage 1's; ``sens_at_1fp`` ranks the candidates by screen score);

plus stage-1 sensitivity (CMBs hit by any candidate), time per scan and peak RSS.
Each condition's full evaluation (per-subject CSV, cohort JSON, FROC CSV/PNG) goes to
``--out/<condition>/``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from cmb.annotations import paired_scans
from cmb.detect.__main__ import DEFAULT_MODEL
from cmb.detect.inference import detect
from cmb.detect.model import load_model, select_device
from cmb.evaluation import evaluate_cohort, froc_curve, load_truth, match_cohort, sensitivity_at_fp, write_evaluation


def _row(name, cohort, froc, seconds):
    s1 = sensitivity_at_fp(froc, [1.0])["sensitivity"].iloc[0]
    return {"condition": name, "scans": cohort["n_subjects"], "cmbs": cohort["n_truth"],
            "sensitivity": cohort["sensitivity"], "fp_avg": cohort["fp_avg"], "precision": cohort["precision"],
            "f1": cohort["f1"], "count_r": cohort.get("count_pearson_r"), "sens_at_1fp": s1,
            "s_per_scan": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--derivatives", required=True, type=Path)
    p.add_argument("--truth", required=True, type=Path)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cpu", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = select_device(not args.cpu)
    model = load_model(args.model, device)
    thr = float(model.card["threshold"])
    scans = paired_scans(args.derivatives, args.truth)
    if not scans:
        print(f"no annotated preprocessed scans under {args.derivatives}", file=sys.stderr)
        return 2
    pairs = {"full": [], "no-phase": [], "screen-only": []}
    seconds = {"full": [], "no-phase": []}
    found = n_truth = 0
    for scan in scans:
        img = nib.load(scan.image)
        mask = np.asarray(nib.load(scan.mask).dataobj) > 0
        phase = nib.load(scan.phase).get_fdata(dtype=np.float32) if scan.phase else None
        truth = load_truth(scan.truth)
        for name, ph in (("full", phase), ("no-phase", None)):
            t0 = time.perf_counter()
            res = detect(img, mask, ph, model)
            seconds[name].append(time.perf_counter() - t0)
            pairs[name].append((scan.key, scan.acquisition, res.table, truth))
        screen = res.table.assign(confidence=res.table["screen_score"])
        pairs["screen-only"].append((scan.key, scan.acquisition, screen, truth))
        m = match_cohort([(scan.key, scan.acquisition, screen, truth)])
        found += int(m.detections["truth_id"].notna().sum())
        n_truth += truth.n
        print(f"{scan.key} ({scan.acquisition}, {img.shape}): {truth.n} CMBs, {len(res.table)} candidates, "
              f"{seconds['full'][-1]:.1f} s", file=sys.stderr)

    rows = []
    for name in ("full", "no-phase", "screen-only"):
        match = match_cohort(pairs[name])
        froc = froc_curve(match)
        t = 0.0 if name == "screen-only" else thr
        write_evaluation(args.out / name, match, t)
        _, cohort = evaluate_cohort(pairs[name], t)
        rows.append(_row(name, cohort, froc, float(np.median(seconds.get(name, [np.nan])))))
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(f"model {args.model} (sha256 {model.card['weights_sha256'][:12]}), threshold {thr:.3f}, device {device.type}, "
          f"{args.threads} threads")
    print(f"stage-1 (screen) sensitivity: {found}/{n_truth} = {found / max(n_truth, 1):.3f}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    by_acq = pd.read_csv(args.out / "full" / "subjects.csv")
    if "acquisition" in by_acq:
        print(by_acq.groupby("acquisition")[["n_truth", "tp", "fp"]].sum().to_string())
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
