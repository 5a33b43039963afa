"""Detect-stage outputs made from ``cmb synth`` ground truth: a perfect detector.

They let the stages after detection (localize, reports) be tested and benchmarked
on their own, with every error theirs.

:func:`truth_candidates` writes, in the detect stage's contract (``cmb.detect``), one
candidate per true CMB (its apparent extent, resampled onto the preprocessed grid)
plus three false candidates: one centred in a ventricle (native MARS map = CSF), one
outside the brain mask, and one below the threshold in parenchyma.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from cmb.atomic import save_nifti, write_json
from cmb.detect import CANDIDATE_COLUMNS
from cmb.localize import to_input_grid
from cmb.synth.lesions import truth_mars_map

FALSE_KINDS = ("csf", "outside_brain", "below_threshold")


def _one(folder: Path, pattern: str) -> Path:
    """The single file matching ``pattern`` that is not a phase image."""
    (path,) = [p for p in sorted(folder.glob(pattern)) if "part-phase" not in p.name]
    return path


def _blob(shape, centre, radius=1):
    out = np.zeros(shape, bool)
    sl = tuple(slice(max(c - radius, 0), c + radius + 1) for c in centre)
    out[sl] = True
    return out


def truth_dir(bids: Path, sub: str) -> Path:
    return bids / "derivatives" / "cmb-truth" / f"sub-{sub}"


def true_grid(bids: Path, sub: str) -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray]:
    """The RAS-reoriented input grid of ``sub`` (as preprocessing makes it), the true brain
    mask on it, and the true native MARS map: every voxel mapped to MNI with the
    simulator's own transform and looked up in the MARS map the truth labels come from
    (the 1 mm map, whatever the head model's resolution)."""
    tdir = truth_dir(bids, sub)
    raw = nib.load(
        _one(bids / f"sub-{sub}", "*/*_part-mag_*.nii.gz")
        if list((bids / f"sub-{sub}").glob("*/*_part-mag_*"))
        else next(
            p for p in sorted((bids / f"sub-{sub}").glob("*/*.nii.gz")) if "T1w" not in p.name
        )
    )
    grid = nib.as_closest_canonical(raw)
    shape, aff = grid.shape[:3], grid.affine
    mask_img = nib.load(next(tdir.rglob("*_desc-brain_mask.nii.gz")))
    mask = to_input_grid(np.asanyarray(mask_img.dataobj) > 0, mask_img.affine, aff, shape).astype(
        bool
    )
    xfm = nib.load(next(tdir.rglob("*_mode-points_xfm.nii.gz")))
    mars_mni = truth_mars_map()
    vox = np.indices(shape).reshape(3, -1).T
    pts = nib.affines.apply_affine(
        np.linalg.inv(xfm.affine) @ aff, vox
    ).T  # voxel -> xfm grid voxel
    field = np.asanyarray(xfm.dataobj)
    mni_pts = np.stack(
        [ndi.map_coordinates(field[..., c], pts, order=1, mode="nearest") for c in range(3)], 1
    )
    idx = np.rint(nib.affines.apply_affine(np.linalg.inv(mars_mni.affine), mni_pts)).astype(int)
    idx = np.clip(idx, 0, np.array(mars_mni.labels.shape) - 1)
    mars = mars_mni.labels[tuple(idx.T)].reshape(shape).astype(int)
    return grid, mask, mars


def truth_candidates(
    bids: Path, out: Path | None, sub: str, dest: Path, *, truth_grid: bool = False
) -> dict:
    """Write candidates (TSV, JSON, dseg, probseg) for ``sub`` into ``dest``; return paths and truth.

    The grid, brain mask and MARS map are the workflow's outputs under ``out``, or with
    ``truth_grid`` the simulator's own (:func:`true_grid`).
    """
    tdir = truth_dir(bids, sub)
    truth_img = nib.load(next(tdir.rglob(f"sub-{sub}*_label-CMB_dseg.nii.gz")))
    truth = pd.read_csv(next(tdir.rglob(f"sub-{sub}*_label-CMB_dseg.tsv")), sep="\t")
    if truth_grid:
        pre, mask, mars = true_grid(bids, sub)
        anat = None
    else:
        anat = out / f"sub-{sub}" / "anat"
        pre = nib.load(_one(anat, f"sub-{sub}*desc-preproc_swi.nii.gz"))
        mask = np.asanyarray(nib.load(_one(anat, f"sub-{sub}*desc-brain_mask.nii.gz")).dataobj) > 0
        mars = np.asanyarray(nib.load(anat / f"sub-{sub}_desc-mars_dseg.nii.gz").dataobj).astype(
            int
        )
    shape, aff = pre.shape[:3], pre.affine
    zooms = np.sqrt((aff[:3, :3] ** 2).sum(0))
    tlab = to_input_grid(
        np.asanyarray(truth_img.dataobj).astype(np.int32), truth_img.affine, aff, shape
    )

    dseg = np.zeros(shape, np.int32)
    rows = []

    def add(voxels: np.ndarray, centre, confidence, xyz=None):
        cid = len(rows) + 1
        dseg[voxels & (dseg == 0)] = cid
        xyz = nib.affines.apply_affine(aff, centre) if xyz is None else xyz
        vol = float(voxels.sum() * np.prod(zooms))
        rows.append(
            {
                "candidate_id": cid,
                "i": int(centre[0]),
                "j": int(centre[1]),
                "k": int(centre[2]),
                "x_mm": float(xyz[0]),
                "y_mm": float(xyz[1]),
                "z_mm": float(xyz[2]),
                "volume_mm3": vol,
                "diameter_mm": float(np.cbrt(6 * vol / np.pi)),
                "screen_score": 0.8,
                "sphericity": 0.9,
                "phase_mean": 0.5,
                "phase_sign": "paramagnetic",
                "phase_used": True,
                "confidence": confidence,
                "above_threshold": confidence >= 0.5,
            }
        )
        return cid

    truth_of = {}
    for n, t in enumerate(truth.itertuples()):
        xyz = np.array([t.x_mm, t.y_mm, t.z_mm])
        c = np.clip(
            np.rint(nib.affines.apply_affine(np.linalg.inv(aff), xyz)).astype(int),
            0,
            np.array(shape) - 1,
        )
        vox = tlab == t.index
        if not vox.any():
            vox = _blob(shape, c, 0)
        truth_of[add(vox, c, round(0.95 - 0.01 * n, 4), xyz)] = t
    false_of = {}
    csf = ndi.binary_erosion(mars == 200, iterations=2) & (dseg == 0)
    pts = np.argwhere(csf)
    c = pts[np.argmin(((pts - pts.mean(0)) ** 2).sum(1))]
    false_of[add(_blob(shape, c) & (mars == 200), c, 0.9)] = "csf"
    outside = ~ndi.binary_dilation(mask, iterations=3)
    pts = np.argwhere(outside[:, :, shape[2] // 2])
    c = np.array([*pts[len(pts) // 2], shape[2] // 2])
    false_of[add(_blob(shape, c) & outside, c, 0.8)] = "outside_brain"
    par = ndi.binary_erosion((mars > 0) & (mars < 200), iterations=2) & (dseg == 0)
    pts = np.argwhere(par)
    c = pts[len(pts) // 3]
    false_of[add(_blob(shape, c, 0), c, 0.2)] = "below_threshold"

    dest.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
    paths = {
        "table": dest / f"sub-{sub}_desc-candidates_cmb.tsv",
        "sidecar": dest / f"sub-{sub}_desc-candidates_cmb.json",
        "dseg": dest / f"sub-{sub}_desc-candidates_dseg.nii.gz",
        "prob": dest / f"sub-{sub}_desc-cmb_probseg.nii.gz",
    }
    table.to_csv(paths["table"], sep="\t", index=False)
    write_json(paths["sidecar"], {"model_sha256": "0" * 64, "threshold": 0.5, "device": "cpu"})
    save_nifti(nib.Nifti1Image(dseg, aff), paths["dseg"])
    conf = np.r_[0.0, table["confidence"].to_numpy(np.float32)]
    save_nifti(nib.Nifti1Image(conf[dseg].astype(np.float32), aff), paths["prob"])
    return {
        "paths": paths,
        "truth": truth_of,
        "false": false_of,
        "table": table,
        "anat": anat,
        "truth_image": truth_img,
        "grid": pre,
        "mask": mask,
        "mars": mars,
        "dseg": dseg,
    }


def subject_inputs(out: Path, sub: str) -> dict:
    """The workflow outputs localize reads for ``sub`` (phase subjects of a tiny synth)."""
    anat = out / f"sub-{sub}" / "anat"
    mni = "MNI152NLin2009cAsym"
    return {
        "input_image": _one(anat, f"sub-{sub}*desc-ingested_swi.nii.gz"),
        "brain_mask": _one(anat, f"sub-{sub}*desc-brain_mask.nii.gz"),
        "mars": anat / f"sub-{sub}_desc-mars_dseg.nii.gz",
        "inv_affine": anat / f"sub-{sub}_from-{mni}_to-SWI_mode-image_xfm.mat",
        "inv_warp": anat / f"sub-{sub}_from-{mni}_to-SWI_mode-image_xfm.nii.gz",
        "quality": anat / f"sub-{sub}_from-SWI_to-{mni}_mode-image_xfm.json",
        "ingest_report": _one(anat, f"sub-{sub}*desc-ingested_swi.json"),
    }


def load_json(path) -> dict:
    return json.loads(Path(path).read_text())
