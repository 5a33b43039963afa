"""Detector accuracy on a held-out annotated cohort, with the ablations, and detect-stage speed.

    # held-out cohort: seeds never used in training, run through the workflow up to preprocessing
    cmb synth --out /data/heldout --preset mixed --n-subjects 20 --seed 9000 --count-profile enriched
    snakemake --profile profiles/local preprocessed_all --config bids_dir=/data/heldout output_dir=/data/heldout-out
    python bench/bench_detect.py --derivatives /data/heldout-out --truth /data/heldout/derivatives/cmb-truth \\
        --out /data/heldout-eval

Conditions (one table row each):

- ``full``: the shipped model, magnitude + phase where present, at the model card's threshold,
  with the vessel rule (candidates rejected as ``vessel`` are not detections);
- ``full-no-vessel-rule``: the same detections with the vessel rule's rejections kept (the ablation);
- ``no-phase``: the same model given the magnitude only (with the vessel rule);
- ``screen-only`` (no stage 2): every screen candidate kept as a detection (its
  sensitivity is stage 1's; ``sens_at_1fp`` ranks the candidates by screen score);

plus stage-1 sensitivity (CMBs hit by any candidate), time per scan and peak RSS.

Where the truth describes the veins (``*_veins.tsv`` segments of ``cmb crosssim``, or
the vein rows of ``cmb synth``'s ``*_mimics.tsv``), the false positives of ``full``
and of the ablation are counted by the angle of the nearest vein to B0 and by the
distance to the nearest vein end; where the truth marks CMBs that touch a vein
(``touches_vein``), their sensitivity is given apart.
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
from cmb.evaluation import (
    evaluate_cohort,
    froc_curve,
    load_truth,
    match_cohort,
    sensitivity_at_fp,
    write_evaluation,
)
from cmb.phase_convention import phase_convention_columns, read_phase_convention


def _row(name, cohort, froc, seconds):
    s1 = sensitivity_at_fp(froc, [1.0])["sensitivity"].iloc[0]
    return {
        "condition": name,
        "scans": cohort["n_subjects"],
        "cmbs": cohort["n_truth"],
        "sensitivity": cohort["sensitivity"],
        "fp_avg": cohort["fp_avg"],
        "precision": cohort["precision"],
        "f1": cohort["f1"],
        "count_r": cohort.get("count_pearson_r"),
        "sens_at_1fp": s1,
        "s_per_scan": seconds,
    }


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
    pairs = {"full": [], "full-no-vessel-rule": [], "no-phase": [], "screen-only": []}
    veins = {}
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
            pairs[name].append(
                (scan.key, scan.acquisition, res.table[~res.table["rejected"]], truth)
            )
            if name == "full":
                pairs["full-no-vessel-rule"].append((scan.key, scan.acquisition, res.table, truth))
        veins[scan.key] = vein_segments(scan.truth)
        screen = res.table.assign(confidence=res.table["screen_score"])
        pairs["screen-only"].append((scan.key, scan.acquisition, screen, truth))
        m = match_cohort([(scan.key, scan.acquisition, screen, truth)])
        found += int(m.detections["truth_id"].notna().sum())
        n_truth += truth.n
        print(
            f"{scan.key} ({scan.acquisition}, {img.shape}): {truth.n} CMBs, {len(res.table)} candidates, "
            f"{seconds['full'][-1]:.1f} s",
            file=sys.stderr,
        )

    rows = []
    matches = {}
    for name in ("full", "full-no-vessel-rule", "no-phase", "screen-only"):
        match = matches[name] = match_cohort(pairs[name])
        froc = froc_curve(match)
        t = 0.0 if name == "screen-only" else thr
        write_evaluation(args.out / name, match, t)
        _, cohort = evaluate_cohort(pairs[name], t)
        rows.append(
            _row(
                name,
                cohort,
                froc,
                float(np.median(seconds.get(name.replace("-no-vessel-rule", ""), [np.nan]))),
            )
        )
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(
        f"model {args.model} (sha256 {model.card['weights_sha256'][:12]}), threshold {thr:.3f}, device {device.type}, "
        f"{args.threads} threads"
    )
    print(f"stage-1 (screen) sensitivity: {found}/{n_truth} = {found / max(n_truth, 1):.3f}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    by_acq = pd.read_csv(args.out / "full" / "subjects.csv")
    if "acquisition" in by_acq:
        print(by_acq.groupby("acquisition")[["n_truth", "tp", "fp"]].sum().to_string())
    for name in ("full", "full-no-vessel-rule"):
        subjects = pd.read_csv(args.out / name / "subjects.csv")
        free = subjects[subjects["n_truth"] == 0]
        if len(free):
            print(
                f"{name}: {len(free)} CMB-free scans, {free['fp'].mean():.2f} false positives per scan "
                f"({', '.join(str(int(v)) for v in free['fp'])})"
            )
        fps = false_positives_near_veins(matches[name], veins, thr)
        if len(fps):
            fps.to_csv(args.out / name / "false_positives_veins.csv", index=False)
            print(f"{name}: {len(fps)} false positives, {int(fps['on_vein'].sum())} on a vein")
            print(
                fps.groupby("angle_to_b0", observed=False)
                .size()
                .rename("fp")
                .to_frame()
                .T.to_string()
            )
            print(
                fps.groupby("to_vein_end", observed=False)
                .size()
                .rename("fp")
                .to_frame()
                .T.to_string()
            )
        touching = touching_vein_sensitivity(matches[name], thr)
        if touching is not None:
            print(
                f"{name}: CMBs touching a vein found {touching[0]}/{touching[1]} = "
                f"{touching[0] / max(touching[1], 1):.3f}"
            )
    conventions = phase_conventions(scans)
    if len(conventions):
        print("phase sign convention per scan (the preprocessed phase's PhaseConvention):")
        print(conventions.to_string(index=False))
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


def phase_conventions(scans) -> pd.DataFrame:
    """One row per scan with a phase: the vendor rule's sign, the sign used, its source, the
    data estimate's z and the flags (``phase_convention_mismatch`` / ``_unconfident``)."""
    rows = []
    for scan in scans:
        if not scan.phase:
            continue
        c = phase_convention_columns(read_phase_convention(scan.phase))
        rows.append(
            {
                "scan": scan.key,
                "acquisition": scan.acquisition,
                "vendor_sign": c["phase_sign_vendor"],
                "used_sign": c["paramagnetic_phase"],
                "source": c["phase_sign_source"],
                "z": c["phase_sign_z"],
                "mismatch": c["phase_convention_mismatch"],
                "unconfident": c["phase_convention_unconfident"],
            }
        )
    return pd.DataFrame(rows)


def vein_segments(truth_path: Path) -> pd.DataFrame:
    """Straight vein segments of a scan's truth (scanner mm): ``start, end, radius_mm, free_start, free_end``.

    ``*_veins.tsv`` (cmb crosssim) lists segments with their free ends; cmb synth's
    ``*_mimics.tsv`` gives each vein's start and end, or its centre, direction and
    length (a chord of a gently bent vein).
    """
    prefix = truth_path.name.split("_label-CMB")[0]
    cols = ["sx", "sy", "sz", "ex", "ey", "ez", "radius_mm", "free_start", "free_end"]
    seg = truth_path.with_name(f"{prefix}_veins.tsv")
    if seg.exists():
        t = pd.read_csv(seg, sep="\t")
        return pd.DataFrame(
            {
                "sx": t["start_x"],
                "sy": t["start_y"],
                "sz": t["start_z"],
                "ex": t["end_x"],
                "ey": t["end_y"],
                "ez": t["end_z"],
                "radius_mm": t["radius_mm"],
                "free_start": t["is_vein_end_start"].astype(str).str.lower() == "true",
                "free_end": t["is_vein_end_end"].astype(str).str.lower() == "true",
            }
        )
    mim = truth_path.with_name(f"{prefix}_mimics.tsv")
    if not mim.exists():
        return pd.DataFrame(columns=cols)
    t = pd.read_csv(mim, sep="\t")
    t = t[t["type"].astype(str).str.startswith("vein")]
    if "start_x" in t:
        start, end = (
            t[["start_x", "start_y", "start_z"]].to_numpy(float),
            t[["end_x", "end_y", "end_z"]].to_numpy(float),
        )
    else:
        c = t[["x_mm", "y_mm", "z_mm"]].to_numpy(float)
        half = (
            t[["direction_x", "direction_y", "direction_z"]].to_numpy(float)
            * t[["length_mm"]].to_numpy(float)
            / 2
        )
        start, end = c - half, c + half
    return pd.DataFrame(
        {
            "sx": start[:, 0],
            "sy": start[:, 1],
            "sz": start[:, 2],
            "ex": end[:, 0],
            "ey": end[:, 1],
            "ez": end[:, 2],
            "radius_mm": t["radius_mm"].to_numpy(float),
            "free_start": True,
            "free_end": True,
        }
    )


def false_positives_near_veins(
    match, veins: dict, threshold: float, on_vein_mm: float = 1.5
) -> pd.DataFrame:
    """Each false positive at ``threshold`` with its nearest vein: distance to its axis, its angle to B0, the
    distance to the nearest free vein end, binned (``on_vein``: within ``on_vein_mm`` of the vein's wall)."""
    det = match.detections
    det = det[(det["confidence"] >= threshold) & det["truth_id"].isna()]
    rows = []
    for r in det.itertuples():
        seg = veins.get(r.subject)
        p = np.array([r.x_mm, r.y_mm, r.z_mm])
        if seg is None or not len(seg):
            rows.append((r.subject, r.acquisition, np.nan, np.nan, np.nan, False))
            continue
        a, b = seg[["sx", "sy", "sz"]].to_numpy(float), seg[["ex", "ey", "ez"]].to_numpy(float)
        d = b - a
        t = np.clip(((p - a) * d).sum(1) / np.maximum((d * d).sum(1), 1e-9), 0, 1)
        dist = np.linalg.norm(a + t[:, None] * d - p, axis=1)
        n = int(np.argmin(dist))
        angle = float(
            np.degrees(np.arccos(min(abs(d[n, 2]) / max(np.linalg.norm(d[n]), 1e-9), 1.0)))
        )
        ends = np.vstack([a[seg["free_start"].to_numpy(bool)], b[seg["free_end"].to_numpy(bool)]])
        to_end = float(np.linalg.norm(ends - p, axis=1).min()) if len(ends) else np.nan
        on = bool(dist[n] <= seg["radius_mm"].iloc[n] + on_vein_mm)
        rows.append((r.subject, r.acquisition, float(dist[n]), angle, to_end, on))
    out = pd.DataFrame(
        rows,
        columns=[
            "subject",
            "acquisition",
            "vein_distance_mm",
            "vein_angle_b0_deg",
            "vein_end_distance_mm",
            "on_vein",
        ],
    )
    off = "not on a vein"
    out["angle_to_b0"] = pd.Categorical(
        np.where(
            out["on_vein"],
            pd.cut(
                out["vein_angle_b0_deg"], [-1, 20, 45, 90], labels=["0-20", "20-45", "45-90"]
            ).astype(str),
            off,
        ),
        ["0-20", "20-45", "45-90", off],
    )
    out["to_vein_end"] = pd.Categorical(
        np.where(
            out["on_vein"],
            pd.cut(
                out["vein_end_distance_mm"],
                [-1, 3, 10, 1e9],
                labels=["<=3 mm", "3-10 mm", ">10 mm"],
            ).astype(str),
            off,
        ),
        ["<=3 mm", "3-10 mm", ">10 mm", off],
    )
    return out


def touching_vein_sensitivity(match, threshold: float) -> tuple[int, int] | None:
    """(found, total) of the CMBs the truth marks ``touches_vein``; None when it marks none."""
    truth = match.truth
    if "touches_vein" not in truth:
        return None
    touching = truth[truth["touches_vein"].astype(str).str.lower() == "true"]
    if not len(touching):
        return None
    det = match.detections
    hit = det[(det["confidence"] >= threshold) & det["truth_id"].notna()]
    found = set(zip(hit["subject"], hit["truth_id"].astype(int)))
    return sum(
        (s, int(t)) in found for s, t in zip(touching["subject"], touching["truth_id"])
    ), len(touching)


if __name__ == "__main__":
    sys.exit(main())
