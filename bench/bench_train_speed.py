"""Speed of `cmb train`'s two parts on one annotated scan: sampling (screen, label, cut patches) and epochs.

    python bench/bench_train_speed.py --image sub-01_part-mag_desc-preproc_swi.nii.gz \\
        --mask sub-01_part-mag_desc-brain_mask.nii.gz --phase sub-01_part-phase_desc-preproc_swi.nii.gz \\
        --truth sub-01_label-CMB_dseg.nii.gz --device both --epochs 3 --steps-per-epoch 80 --threads 2

The scan is both the training and the validation set, so an epoch here is the
shipped model's epoch (80 steps of 64 patches, the hard-negative mining pass over
the training negatives) plus scoring one validation scan. Real runs validate on
many scans (val3: 38), which adds to each epoch on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from cmb.annotations import Scan
from cmb.detect.training import TrainConfig, sample_scan, train_model


def measure(scan: Scan, device: str, args) -> dict:
    t0 = time.perf_counter()
    train = sample_scan(scan, device=device)
    t1 = time.perf_counter()
    val = sample_scan(scan, keep_all=True, device=device)
    t2 = time.perf_counter()
    cfg = TrainConfig(
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        patience=args.epochs,
        ema=0.99,
        seed=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        train_model(
            [train],
            [val],
            Path(tmp) / "m",
            cfg,
            {"name": "bench"},
            log_path=Path(tmp) / "log.csv",
            progress=False,
            device=device,
        )
        log = pd.read_csv(Path(tmp) / "log.csv")
    t3 = time.perf_counter()
    epochs = log["seconds"].diff().fillna(log["seconds"])
    return {
        "device": device,
        "sample_train_scan_s": t1 - t0,
        "sample_val_scan_s": t2 - t1,
        "train_patches": len(train.labels),
        "val_candidates": len(val.labels),
        "first_epoch_s": epochs.iloc[0],
        "later_epoch_s": epochs.iloc[1:].mean() if len(epochs) > 1 else None,
        "operating_point_s": (t3 - t2) - log["seconds"].iloc[-1],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", required=True)
    p.add_argument("--mask", required=True)
    p.add_argument("--phase")
    p.add_argument("--truth", required=True, help="*_label-CMB_dseg.nii.gz or point TSV")
    p.add_argument("--device", choices=("cpu", "cuda", "both"), default="cpu")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    scan = Scan(
        "sub-bench",
        "bench",
        Path(args.image),
        Path(args.mask),
        Path(args.phase) if args.phase else None,
        Path(args.truth),
    )
    devices = ("cpu", "cuda") if args.device == "both" else (args.device,)
    rows = [measure(scan, d, args) for d in devices]
    print(
        f"{args.image}: {args.epochs} epochs of {args.steps_per_epoch} steps x {args.batch_size} patches, "
        f"{args.threads} CPU threads"
        + (f", {torch.cuda.get_device_name(0)}" if "cuda" in devices else "")
    )
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
