"""Benchmark the per-subject spine: ingest, preprocess, register to MNI, warp the MARS map.

Every stage runs as its own ``python -m cmb.<stage>`` process, as the workflow
runs it (so Python and ANTsPy start-up are counted), on one synthetic
0.5 x 0.5 x 2 mm SWI (512 x 448 x 72, ``cmb synth --preset swi-3t``). The MNI
MARS map is built once per workflow run and timed separately. The per-step
breakdown comes from the stages' own JSON reports.

    python bench/bench_spine.py [--threads 2] [--work /tmp/cmb-bench-spine] [--t1w]
        [--labels]   # also time nearestNeighbor vs genericLabel for the MARS warp
        [--naive]    # also time the naive route: full-resolution N4 and 1 mm SyN (minutes)

Target: ingest + preprocess + register + MARS warp <= 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return elapsed


def _synth(work: Path, t1w: bool) -> Path:
    bids = work / "bids"
    if not (bids / "dataset_description.json").is_file():
        from cmb.synth import SynthOptions, synthesize

        print("generating one swi-3t subject (not timed) ...", flush=True)
        synthesize(
            SynthOptions(out=bids, n_subjects=1, seed=5, preset="swi-3t", with_t1w=t1w), log=print
        )
    return bids


def _row(name: str, seconds: float, note: str = "") -> str:
    return f"| {name:<38} | {seconds:8.1f} | {note} |"


def _naive(work: Path, threads: int) -> list[str]:
    """The route the coarse design avoids: full-resolution N4, affine + SyN at 1 mm."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import ants
    import nibabel as nib
    import numpy as np

    from cmb.registration.ants_adapter import ants_tempdir, to_ants
    from cmb.registration.register import mni_target

    img = nib.load(work / "out" / "sub-01_desc-preproc_T2starw.nii.gz")
    mask = np.asanyarray(nib.load(work / "out" / "sub-01_desc-brain_mask.nii.gz").dataobj) > 0
    raw = to_ants(img)
    rows = []
    t0 = time.perf_counter()
    ants.n4_bias_field_correction(raw, mask=to_ants(img, mask.astype(np.float32)), shrink_factor=4)
    rows.append(_row("naive: N4 at full resolution (shrink 4)", time.perf_counter() - t0))
    fixed, _ = mni_target(1, "swi")
    moving = to_ants(img, np.asanyarray(img.dataobj) * mask)
    with ants_tempdir():
        t0 = time.perf_counter()
        ants.registration(fixed, moving, "SyN")
        rows.append(_row("naive: affine + SyN at 1 mm (ANTsPy 'SyN')", time.perf_counter() - t0))
    return rows


def _labels(work: Path, threads: int) -> list[str]:
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import nibabel as nib

    from cmb.registration.ants_adapter import xfm_paths
    from cmb.registration.warp_labels import warp_labels_to_native

    ref = nib.load(work / "out" / "sub-01_desc-preproc_T2starw.nii.gz")
    mars = nib.load(work / "tpl" / "tpl-MNI152NLin2009cAsym_res-1_desc-mars_dseg.nii.gz")
    xfm = xfm_paths(work / "out" / "sub-01")
    rows, outs = [], {}
    for interp in ("nearestNeighbor", "genericLabel"):
        t0 = time.perf_counter()
        outs[interp] = warp_labels_to_native(mars, ref, xfm, interpolation=interp).get_fdata()
        rows.append(_row(f"MARS warp, {interp} (in process)", time.perf_counter() - t0))
    inside = outs["genericLabel"] > 0
    same = float((outs["nearestNeighbor"] == outs["genericLabel"])[inside].mean())
    rows.append(f"| {'  voxels with the same label (in brain)':<38} | {100 * same:7.2f}% | |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "cmb-bench-spine"
    )
    ap.add_argument("--t1w", action="store_true", help="register through a T1w of the same session")
    ap.add_argument("--labels", action="store_true", help="time nearestNeighbor vs genericLabel")
    ap.add_argument("--naive", action="store_true", help="time full-resolution N4 and 1 mm SyN")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    bids = _synth(work, args.t1w)
    env = {
        **os.environ,
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(args.threads),
        "OMP_NUM_THREADS": str(args.threads),
        "OPENBLAS_NUM_THREADS": str(args.threads),
    }
    py = sys.executable
    out, tpl = work / "out", work / "tpl"
    out.mkdir(exist_ok=True)
    mars = tpl / "tpl-MNI152NLin2009cAsym_res-1_desc-mars_dseg.nii.gz"
    rows = []

    t_mars = _run(
        [
            py,
            "-m",
            "cmb.mars_map",
            "--out-dseg",
            str(mars),
            "--out-tsv",
            str(mars).replace(".nii.gz", ".tsv"),
        ],
        env,
    )

    mag = next(bids.rglob("sub-01*part-mag*.nii.gz"))
    phase = next(bids.rglob("sub-01*part-phase*.nii.gz"))
    t1w = next(bids.rglob("sub-01*_T1w.nii.gz"), None) if args.t1w else None
    ing = {k: out / f"sub-01_desc-ingested_{k}.nii.gz" for k in ("T2starw", "phase", "T1w")}
    cmd = [
        py,
        "-m",
        "cmb.ingest",
        "run",
        "--subject",
        "01",
        "--kind",
        "gre_phase",
        "--mag",
        str(mag),
        "--phase",
        str(phase),
        "--bids-dir",
        str(bids),
        "--out-mag",
        str(ing["T2starw"]),
        "--out-phase",
        str(ing["phase"]),
        "--out-json",
        str(out / "sub-01_desc-ingest.json"),
    ]
    if t1w is not None:
        cmd += ["--t1w", str(t1w), "--out-t1w", str(ing["T1w"])]
    t_ingest = _run(cmd, env)
    convention = json.loads(next(bids.rglob("sub-01*_synth.json")).read_text())[
        "paramagnetic_phase"
    ]

    t_pre = _run(
        [
            py,
            "-m",
            "cmb.preprocess",
            "--mag",
            str(ing["T2starw"]),
            "--phase",
            str(ing["phase"]),
            "--paramagnetic-phase",
            convention,
            "--threads",
            str(args.threads),
            "--out-mag",
            str(out / "sub-01_desc-preproc_T2starw.nii.gz"),
            "--out-mask",
            str(out / "sub-01_desc-brain_mask.nii.gz"),
            "--out-phase",
            str(out / "sub-01_desc-preproc_phase.nii.gz"),
            "--out-json",
            str(out / "sub-01_desc-preproc.json"),
        ],
        env,
    )
    cmd = [
        py,
        "-m",
        "cmb.registration",
        "--image",
        str(out / "sub-01_desc-preproc_T2starw.nii.gz"),
        "--mask",
        str(out / "sub-01_desc-brain_mask.nii.gz"),
        "--out-prefix",
        str(out / "sub-01"),
        "--out-quality",
        str(out / "sub-01_desc-registration_qc.json"),
        "--mars-mni",
        str(mars),
        "--out-mars",
        str(out / "sub-01_desc-mars_dseg.nii.gz"),
        "--out-mars-tsv",
        str(out / "sub-01_desc-mars_dseg.tsv"),
        "--threads",
        str(args.threads),
    ]
    if t1w is not None:
        cmd += ["--t1w", str(ing["T1w"])]
    t_reg = _run(cmd, env)

    pre = json.loads((out / "sub-01_desc-preproc.json").read_text())
    reg = json.loads((out / "sub-01_desc-registration_qc.json").read_text())
    total = t_ingest + t_pre + t_reg
    rows += [
        f"| {'stage (own process)':<38} | {'seconds':>8} | notes |",
        f"|{'-' * 40}|{'-' * 10}|-------|",
        _row("MNI MARS map (once per run)", t_mars, "not per subject"),
        _row("ingest", t_ingest, "checks, phase units -> radians, float32"),
        _row("preprocess", t_pre, f"shape {pre['shape']}, voxel {pre['voxel_size_mm']} mm"),
    ]
    rows += [_row(f"  {k}", v) for k, v in pre["timings"].items() if k != "total_s"]
    rows += [_row("  (start-up: imports)", t_pre - pre["timings"]["total_s"])]
    rows += [
        _row(
            "register + MARS warp",
            t_reg,
            f"NMI {reg['quality']['nmi']}, "
            f"mask Dice {reg['quality']['mask_dice']}, SyN {reg['quality']['syn']}",
        )
    ]
    rows += [_row(f"  {k}", v) for k, v in reg["timings"].items() if k != "total_s"]
    rows += [_row("  (start-up: imports)", t_reg - reg["timings"]["total_s"])]
    rows += [
        _row("TOTAL ingest + preprocess + register", total, "target <= 60 s"),
        _row("TOTAL preprocess + register", t_pre + t_reg, ""),
    ]
    if args.labels:
        rows += _labels(work, args.threads)
    if args.naive:
        rows += _naive(work, args.threads)
    print(
        f"\nthreads={args.threads}  cpu_count={os.cpu_count()}  load average at end={os.getloadavg()[0]:.2f}"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
