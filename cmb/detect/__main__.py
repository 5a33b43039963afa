"""``python -m cmb.detect`` / ``cmb detect``: detect CMBs in one preprocessed scan.

    python -m cmb.detect --image sub-01_desc-preproc_swi.nii.gz --mask sub-01_desc-brain_mask.nii.gz \\
        [--phase sub-01_part-phase_desc-preproc_swi.nii.gz] --model cmb/detect/weights/default \\
        --out-table cands.tsv --out-sidecar cands.json --out-dseg cands_dseg.nii.gz --out-prob prob.nii.gz
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from cmb import __version__
from cmb.atomic import atomic_path, save_nifti, write_json
from cmb.config import add_config_sections, default
from cmb.detect.inference import detect
from cmb.detect.model import load_model, select_device

_log = logging.getLogger("cmb.detect")

DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "default"


def _load(path, what: str) -> nib.Nifti1Image:
    try:
        img = nib.load(path)
        img.get_fdata(dtype=np.float32)  # read now: a truncated file fails here, named
    except Exception as e:  # nibabel raises many kinds for broken files
        raise ValueError(f"{path}: cannot read the {what} ({type(e).__name__}: {e})") from None
    if img.ndim != 3:
        raise ValueError(f"{path}: the {what} must be 3D, got shape {img.shape}")
    return img


def write_table(table, path) -> None:
    """TSV with fixed formatting, so that equal results give identical bytes."""
    with atomic_path(path) as tmp:
        table.to_csv(
            tmp, sep="\t", index=False, float_format="%.6g", na_rep="n/a", lineterminator="\n"
        )


def run_detect(
    image: str,
    mask: str,
    out_table: str,
    out_sidecar: str,
    out_dseg: str,
    out_prob: str,
    phase: str | None = None,
    model_dir: str | Path = DEFAULT_MODEL,
    threshold: float | None = None,
    use_gpu: bool = default("detection", "use_gpu"),
    batch_size: int = default("detection", "batch_size"),
    vessel_rule: bool = default("detection", "vessel_rule"),
) -> dict:
    """Detect, and write the candidate table, its JSON sidecar, the label map and the confidence map."""
    t0 = time.perf_counter()
    device = select_device(use_gpu)
    model = load_model(model_dir, device)
    img = _load(image, "preprocessed magnitude")
    mask_img = _load(mask, "brain mask")
    if mask_img.shape != img.shape or not np.allclose(mask_img.affine, img.affine, atol=1e-3):
        raise ValueError(
            f"{mask}: brain mask grid {mask_img.shape} does not match the image {img.shape}"
        )
    ph = None
    if phase:
        ph_img = _load(phase, "phase")
        if ph_img.shape != img.shape or not np.allclose(ph_img.affine, img.affine, atol=1e-3):
            raise ValueError(
                f"{phase}: phase grid {ph_img.shape} does not match the magnitude {img.shape}"
            )
        ph = ph_img.get_fdata(dtype=np.float32)
    mask_data = np.asarray(mask_img.dataobj) > 0
    if not mask_data.any():
        raise ValueError(f"{mask}: empty brain mask")
    zooms = img.header.get_zooms()[:3]
    t1 = time.perf_counter()
    result = detect(
        img, mask_data, ph, model, threshold, batch_size, vessel_rule_enabled=vessel_rule
    )

    write_table(result.table, out_table)
    hdr_img = nib.Nifti1Image(result.labels.astype(np.int32), img.affine)
    hdr_img.header.set_xyzt_units("mm")
    save_nifti(hdr_img, out_dseg)
    prob_img = nib.Nifti1Image(result.probability.astype(np.float32), img.affine)
    prob_img.header.set_xyzt_units("mm")
    save_nifti(prob_img, out_prob)
    sidecar = {
        "Description": "CMB candidates (dark-blob screen) scored by the CNN; confidence calibrated on validation data",
        "cmb_version": __version__,
        "model_dir": str(model_dir),
        "model_name": model.card.get("name"),
        "model_sha256": model.card["weights_sha256"],
        "threshold": result.threshold,
        "test_time_views": int(model.card.get("tta", 1)),
        "phase_wrap_limit": model.card.get("phase_wrap_limit"),
        "n_scored_without_phase": result.n_phase_hidden,
        "device": device.type,
        "mixed_precision": device.type == "cuda",
        "gpu_peak_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        if device.type == "cuda"
        else None,
        "torch_version": torch.__version__,
        "phase_used": ph is not None,
        "n_candidates": int(len(result.table)),
        "n_above_threshold": int(result.table["above_threshold"].sum()),
        "vessel_rule": result.vessel["settings"],
        "vessel_evidence_reliable": result.vessel["reliable"],
        "vessel_evidence_note": None
        if result.vessel["reliable"]
        else (
            f"slices of {max(zooms):.1f} mm are thicker than the vessel rule's thick_slice_mm "
            f"({result.vessel['settings']['thick_slice_mm']} mm): a vein is told from a microbleed by fewer "
            "slices, so the rule asks for a longer through-plane structure and may keep more veins"
        ),
        "n_vessel_measured": result.vessel["n_measured"],
        "n_rejected_vessel": result.vessel["n_rejected"],
        "n_rejected_vessel_above_threshold": result.vessel["n_rejected_above_threshold"],
        "inputs": {"image": str(image), "mask": str(mask), "phase": str(phase) if phase else None},
        "seconds": {
            "load": round(t1 - t0, 3),
            **{k: round(v, 3) for k, v in result.seconds.items()},
            "total": round(time.perf_counter() - t0, 3),
        },
    }
    write_json(out_sidecar, sidecar)
    _log.info(
        "%d candidates, %d above threshold %.3f (%s, %.1f s)",
        sidecar["n_candidates"],
        sidecar["n_above_threshold"],
        result.threshold,
        device.type,
        sidecar["seconds"]["total"],
    )
    return sidecar


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="cmb detect", description=__doc__.splitlines()[0])
    p.add_argument("--image", required=True, help="preprocessed magnitude (NIfTI)")
    p.add_argument("--mask", required=True, help="brain mask on the same grid")
    p.add_argument(
        "--phase", help="high-pass phase on the same grid (radians, paramagnetic positive)"
    )
    p.add_argument(
        "--no-phase",
        dest="use_phase",
        action="store_false",
        help="ignore --phase (magnitude-only path)",
    )
    p.add_argument("--model", dest="model_dir", help="model folder (default: the shipped weights)")
    p.add_argument(
        "--threshold", type=float, help="operating threshold (default: the model card's)"
    )
    p.add_argument("--batch-size", type=int)
    p.add_argument(
        "--no-vessel-rule",
        dest="vessel_rule",
        action="store_false",
        help="measure the vessel evidence but reject no candidate as a vessel (config detection.vessel_rule)",
    )
    p.add_argument(
        "--cpu",
        dest="use_gpu",
        action="store_false",
        help="do not use a GPU even if one is visible",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)"
    )
    p.add_argument("--out-table", required=True)
    p.add_argument("--out-sidecar", required=True)
    p.add_argument("--out-dseg", required=True)
    p.add_argument("--out-prob", required=True)
    return add_config_sections(p, "detection")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    run_detect(
        args.image,
        args.mask,
        args.out_table,
        args.out_sidecar,
        args.out_dseg,
        args.out_prob,
        phase=args.phase if args.use_phase else None,
        model_dir=args.model_dir or DEFAULT_MODEL,
        threshold=args.threshold,
        use_gpu=args.use_gpu,
        batch_size=args.batch_size,
        vessel_rule=args.vessel_rule,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
