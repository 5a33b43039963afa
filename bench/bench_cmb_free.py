"""False positives on real tissue with no CMB: the real multi-echo GRE crop.

    python bench/bench_cmb_free.py --mag ../shared/data/real-megre-crop/Mag.nii \\
        --phase ../shared/data/real-megre-crop/Phase.nii [--echo-times 0.004,0.008,0.012]

The crop (MriResearchTools.jl test data, 51x51x41 voxels of 0.47x0.47x1 mm, 3 echoes;
real veins, no CMB) is too small for the workflow's field-of-view check and for
registration, so it is prepared here with the workflow's own functions: RMS echo
combination, the phase of the echo chosen by ``choose_phase_echo`` rescaled to radians
(``detect_phase_units``), N4, median normalization, the homodyne high-pass phase, and a
brain mask of the whole crop minus a 1.5 mm rim. Every detection is a false positive.
One row per condition: with and without phase, with and without the vessel rule.
"""

from __future__ import annotations

import argparse
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from cmb.detect.__main__ import DEFAULT_MODEL
from cmb.detect.inference import detect
from cmb.detect.model import load_model, select_device
from cmb.echo_combine import combine_echoes
from cmb.phase_units import rescale_phase
from cmb.preprocess import highpass_phase, n4_bias_correct, normalize_intensity


def prepare(mag_path, phase_path, echo_times=None, paramagnetic_phase="negative"):
    """Preprocessed magnitude image, mask and high-pass phase of a small multi-echo crop."""
    combo = combine_echoes(mag_path, phase_path, echo_times=echo_times, min_fov_mm=None)
    img = combo.magnitude
    zooms = img.header.get_zooms()[:3]
    mag = img.get_fdata(dtype=np.float32)
    mask = np.zeros(mag.shape, bool)
    rim = np.ceil(1.5 / np.asarray(zooms)).astype(int)
    mask[tuple(slice(r, n - r) for r, n in zip(rim, mag.shape))] = True
    corrected, _ = n4_bias_correct(
        nib.Nifti1Image(mag, img.affine), mask, spacing_mm=1.0, iterations=(50, 50)
    )
    mag = corrected.get_fdata(dtype=np.float32)
    mag, _ = normalize_intensity(mag, mask)
    phase, _ = rescale_phase(combo.phase.get_fdata(dtype=np.float32), name=str(phase_path))
    hp = highpass_phase(phase, mag, zooms, paramagnetic_phase=paramagnetic_phase, mask=mask)
    return nib.Nifti1Image(mag, img.affine), mask, hp


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mag", required=True)
    p.add_argument("--phase", required=True)
    p.add_argument("--echo-times", help="seconds, comma-separated (the crop records none)")
    p.add_argument(
        "--paramagnetic-phase",
        default="negative",
        choices=["positive", "negative"],
        help="sign of a paramagnetic shift in the raw phase (unknown for the crop: both are reported)",
    )
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, select_device(False))
    tes = [float(t) for t in args.echo_times.split(",")] if args.echo_times else None
    rows = []
    for sign in ("negative", "positive"):
        img, mask, hp = prepare(args.mag, args.phase, tes, sign)
        for phase_name, ph in (("with phase", hp), ("no phase", None)):
            if ph is None and sign == "positive":
                continue
            for rule in (True, False):
                t = detect(img, mask, ph, model, vessel_rule_enabled=rule).table
                kept = t[t["above_threshold"] & ~t["rejected"]]
                rows.append(
                    {
                        "phase": phase_name
                        if ph is None
                        else f"{phase_name} (paramagnetic {sign})",
                        "vessel_rule": rule,
                        "candidates": len(t),
                        "above_threshold": int(t["above_threshold"].sum()),
                        "rejected_vessel": int((t["above_threshold"] & t["rejected"]).sum()),
                        "false_positives": len(kept),
                        "max_confidence": float(t["confidence"].max()) if len(t) else float("nan"),
                    }
                )
    print(
        f"{args.mag}: {img.shape}, voxels {tuple(round(float(z), 3) for z in img.header.get_zooms()[:3])} mm, "
        f"threshold {model.card['threshold']:.3f}"
    )
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
