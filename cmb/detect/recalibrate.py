"""Recalibrating a trained detector on annotated scans: ``cmb calibrate``.

The weights stay as they are; the confidence calibration (Platt scaling), the
operating threshold (both :mod:`cmb.detect.calibration`), the test-time augmentation and the validation metrics of the
model card are fitted again on the given scans. Use it to adapt the shipped model's
operating point to a site or scanner from a few annotated scans, when there are too
few to fine-tune on, or to calibrate for a different number of test-time views.

    cmb calibrate --model cmb/detect/weights/default --derivatives out/ --truth annotations/ \\
        --out my-model/ [--tta 8] [--phase-wrap-limit 0.15] [--max-fp-avg 0.5]

The scans must not be ones the model was trained on, or the threshold will be
optimistic.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from cmb.detect.calibration import DEFAULT_TTA, add_operating_point_arguments
from cmb.detect.model import ModelError, load_model, save_model
from cmb.detect.patches import DEFAULT_PHASE_WRAP_LIMIT
from cmb.detect.training import (
    add_annotated_data_arguments,
    add_runtime_arguments,
    annotated_datasets,
    fit_operating_point,
    model_summary,
    sample_scan,
    scan_data_description,
    start_run,
)

__all__ = ["recalibrate"]

_log = logging.getLogger(__name__)


def recalibrate(
    model_dir: Path,
    scans,
    out_dir: Path,
    tta: int = DEFAULT_TTA,
    max_fp_avg: float | None = None,
    progress: bool = True,
    device: torch.device | str = "cpu",
    phase_wrap_limit: float | None = DEFAULT_PHASE_WRAP_LIMIT,
) -> dict:
    """Fit the calibration, threshold and validation metrics of ``model_dir`` on ``scans``; write ``out_dir``."""
    model = load_model(model_dir, device)
    card = model.card
    samples = [
        sample_scan(
            s,
            card.get("screen"),
            keep_all=True,
            scales=tuple(tuple(x) for x in card["scales"]),
            device=device,
        )
        for s in tqdm(scans, desc="calibration scans", disable=not progress)
    ]
    point = fit_operating_point(
        model.net, samples, torch.device(device), tta, max_fp_avg, phase_wrap_limit
    )
    previous = {
        k: card.get(k)
        for k in (
            "calibration",
            "threshold",
            "threshold_rule",
            "tta",
            "phase_wrap_limit",
            "validation",
        )
    }
    new = {
        **card,
        **point,
        "recalibration": {
            "command": "cmb calibrate "
            + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["calibrate"] else sys.argv[1:]),
            "from_model": str(model_dir),
            "data": scan_data_description(scans),
            "previous": previous,
        },
    }
    for key in ("weights_sha256", "weights_file", "architecture", "hyper_parameters"):
        new.pop(key, None)
    save_model(model.net, out_dir, new)
    return load_model(out_dir).card


def build_parser(parser=None):
    p = parser or argparse.ArgumentParser(prog="cmb calibrate", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        required=True,
        type=Path,
        help="model folder to recalibrate (e.g. the shipped default)",
    )
    add_annotated_data_arguments(p)
    p.add_argument(
        "--out", required=True, type=Path, help="model folder to write (not the input model)"
    )
    add_operating_point_arguments(p)
    add_runtime_arguments(p)
    return p


def run(args) -> int:
    device = start_run(args)
    if args.out.resolve() == args.model.resolve():
        print(
            f"cmb calibrate: error: --out {args.out} is the input model; write a new folder",
            file=sys.stderr,
        )
        return 2
    t0 = time.perf_counter()
    try:
        scans = [s for d in annotated_datasets(args.derivatives, args.truth) for s in d]
        if not scans:
            raise ValueError(
                f"no annotated scans found (derivatives {', '.join(map(str, args.derivatives))}; "
                f"truth {', '.join(map(str, args.truth))})"
            )
        card = recalibrate(
            args.model,
            scans,
            args.out,
            args.tta,
            args.max_fp_avg,
            progress=not args.no_progress,
            device=device,
            phase_wrap_limit=args.phase_wrap_limit,
        )
    except (ModelError, ValueError) as err:
        print(f"cmb calibrate: error: {err}", file=sys.stderr)
        return 2
    print(model_summary(args.out, card, time.perf_counter() - t0))
    return 0


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
