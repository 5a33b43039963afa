"""Benchmark: MARS categories from a cohort's own parcellation against the atlas route and the truth.

    python bench/bench_parcellation.py --work /tmp/bench-parcellation --n-subjects 4 --n-cmb 30 --seed 42

``cmb synth --t1w --parcellation`` subjects: each T1w comes with its true aparc+aseg labels
(fMRIPrep-named, ``derivatives/synth-parcellation``), the parcellation a FreeSurfer run on
that T1w aims at. Each subject is registered once (cmb.registration.register_subject: SWI->T1w
rigid, T1w->MNI affine + SyN, the workflow's defaults) with the parcellation route; the atlas
route's map is the MNI MARS map warped with the same transforms. At every true CMB's centre
the two maps' MARS categories and regions are read and compared with the truth table
(which comes from the MNI MARS map through the simulator's exact warp). The input image is
the raw magnitude (RAS) with the truth brain mask, so that no preprocessing error enters.

Prints one row per subject and the pooled figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cmb.config import default
from cmb.mars_map import write_mars_map
from cmb.mars_region import decode_label
from cmb.parcellation import find_parcellation
from cmb.registration import register_subject, warp_labels_to_native, xfm_paths
from cmb.registration.warp_labels import warp_mars_to_native
from cmb.synth import SynthOptions, synthesize


def run(work: Path, n_subjects: int, n_cmb: int, seed: int, preset: str) -> pd.DataFrame:
    bids = work / "bids"
    if not (bids / "dataset_description.json").is_file():
        synthesize(
            SynthOptions(
                out=bids,
                n_subjects=n_subjects,
                seed=seed,
                preset=preset,
                n_cmb=n_cmb,
                with_t1w=True,
                parcellation=True,
            ),
            log=print,
        )
    mni_mars = work / "mni_mars_dseg.nii.gz"
    if not mni_mars.is_file():
        write_mars_map(mni_mars)
    root = bids / "derivatives" / "synth-parcellation"
    rows = []
    for sub_dir in sorted(bids.glob("sub-*")):
        sub = sub_dir.name[4:]
        truth_dir = next((bids / "derivatives" / "cmb-truth" / sub_dir.name).glob("*"))
        out = work / "out" / sub_dir.name
        out.mkdir(parents=True, exist_ok=True)
        mag = nib.as_closest_canonical(nib.load(next(sub_dir.glob("*/*part-mag*.nii.gz"))))
        mask = nib.as_closest_canonical(nib.load(next(truth_dir.glob("*desc-brain_mask.nii.gz"))))
        image, brain = out / "mag.nii.gz", out / "mask.nii.gz"
        nib.save(nib.Nifti1Image(mag.get_fdata(dtype=np.float32), mag.affine), image)
        nib.save(nib.Nifti1Image((mask.get_fdata() > 0).astype(np.uint8), mask.affine), brain)
        t0 = time.perf_counter()
        report = register_subject(
            image,
            brain,
            out / sub_dir.name,
            t1w=next(sub_dir.glob("anat/*_T1w.nii.gz")),
            mars_mni=mni_mars,
            out_mars=out / "mars_dseg.nii.gz",
            parcellation=find_parcellation(root, sub),
            parcellation_root=root,
            step_mm=4,
            syn_iterations=(40, 20),
        )
        seconds = time.perf_counter() - t0
        img = nib.load(image)
        maps = {
            "parcellation": np.asanyarray(nib.load(out / "mars_dseg.nii.gz").dataobj),
            "atlas": np.asanyarray(
                warp_labels_to_native(
                    nib.load(mni_mars), img, xfm_paths(out / sub_dir.name)
                ).dataobj
            ),
            # the default atlas route: the subject's own cortex/white-matter border
            "atlas_tissue": np.asanyarray(
                warp_mars_to_native(
                    img,
                    nib.load(brain),
                    xfm_paths(out / sub_dir.name),
                    {},
                    native_tissue={
                        k: default("mars", k) for k in ("dark_focus_mm", "cortex_search_mm")
                    },
                ).dataobj
            ),
        }
        cmbs = pd.read_csv(next(truth_dir.glob("*_label-CMB_dseg.tsv")), sep="\t")
        xyz = cmbs[["x_mm", "y_mm", "z_mm"]].to_numpy()
        ijk = tuple(
            np.rint((np.linalg.inv(img.affine) @ np.c_[xyz, np.ones(len(xyz))].T)[:3]).astype(int)
        )
        row = {
            "subject": sub_dir.name,
            "n_cmb": len(cmbs),
            "register_s": round(seconds, 1),
            "brain_dice": report["parcellation"]["brain_dice"],
            "voxel_category_agreement": report["parcellation"]["atlas_category_agreement"],
        }
        called = {k: [decode_label(v) for v in m[ijk].tolist()] for k, m in maps.items()}
        for k, c in called.items():
            row[f"{k}_category"] = float(
                np.mean([a[0] == b for a, b in zip(c, cmbs["mars_category"])])
            )
            row[f"{k}_region"] = float(np.mean([a[1] == b for a, b in zip(c, cmbs["mars_region"])]))
        for k in ("atlas", "atlas_tissue"):
            row[f"routes_agree_{k}"] = float(
                np.mean([a[0] == b[0] for a, b in zip(called["parcellation"], called[k])])
            )
        row["_counts"] = {
            k: [sum(a[0] == b for a, b in zip(c, cmbs["mars_category"])) for c in [called[k]]][0]
            for k in called
        } | {
            f"agree_{k}": sum(a[0] == b[0] for a, b in zip(called["parcellation"], called[k]))
            for k in ("atlas", "atlas_tissue")
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "_counts"}))
    return pd.DataFrame(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--n-subjects", type=int, default=4)
    p.add_argument("--n-cmb", type=int, default=30)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--preset", default="tiny")
    a = p.parse_args()
    df = run(a.work, a.n_subjects, a.n_cmb, a.seed, a.preset)
    n = int(df["n_cmb"].sum())
    counts = pd.DataFrame(list(df.pop("_counts")))
    print()
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(
        f"\npooled over {n} CMBs: category correct, parcellation route {counts['parcellation'].sum() / n:.3f}, "
        f"atlas route {counts['atlas_tissue'].sum() / n:.3f} "
        f"(without native tissue {counts['atlas'].sum() / n:.3f}); the parcellation route agrees with "
        f"the atlas route on {counts['agree_atlas_tissue'].sum() / n:.3f} "
        f"(without native tissue {counts['agree_atlas'].sum() / n:.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
