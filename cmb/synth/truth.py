"""Ground truth of a synthetic scan, as BIDS derivatives under ``derivatives/cmb-truth/``.

Per scan (``<prefix>`` holds the scan's sub/ses/run entities):

- ``<prefix>_label-CMB_dseg.nii.gz``: one label per visible CMB on the acquired grid;
- ``<prefix>_label-CMB_dseg.tsv``: one row per visible CMB (``index`` is the label),
  ``touches_vein`` where its centre is within its radius + a vein's radius + 0.5 mm of
  that vein's axis, on this scan's geometry;
- ``<prefix>_mimics.tsv``: veins (with start and end points, angle to B0, shape and
  parent), calcifications, air cavities, and the CMBs too faint to see on this scan
  (type ``cmb_subvisible``: no voxel darkened by 20 %, typically a small one in a 5 mm
  slice). Like a rater, the truth leaves those out, so the indices of the visible CMBs
  can have gaps;
- ``<prefix>_desc-brain_mask.nii.gz``: the brain (parenchyma + CSF) on the acquired grid;
- ``<prefix>_from-scanner_to-MNI152NLin2009cAsym_mode-points_xfm.nii.gz``: for each
  point of a coarse grid in scanner space, its MNI coordinates (4D, last axis x/y/z);
- ``<prefix>_synth.json``: every simulation parameter of the scan.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cmb.atomic import save_nifti, write_json, write_text
from cmb.synth.anatomy import AIR_CAVITIES
from cmb.synth.geometry import SubjectWarp, vein_clearance
from cmb.synth.lesions import TOUCH_MARGIN_MM, vein_paths
from cmb.template import TEMPLATE_NAME

__all__ = ["CMB_COLUMNS", "MIMIC_COLUMNS", "write_truth", "mni_coordinate_map"]

CMB_COLUMNS = [
    "index",
    "name",
    "x_mm",
    "y_mm",
    "z_mm",
    "i",
    "j",
    "k",
    "radius_mm",
    "apparent_diameter_mm",
    "chi_ppm",
    "mars_category",
    "mars_region",
    "hemisphere",
    "atlas_label",
    "mni_x",
    "mni_y",
    "mni_z",
    "touches_vein",
]
MIMIC_COLUMNS = [
    "type",
    "x_mm",
    "y_mm",
    "z_mm",
    "i",
    "j",
    "k",
    "radius_mm",
    "length_mm",
    "direction_x",
    "direction_y",
    "direction_z",
    "through_plane",
    "chi_ppm",
    "start_x",
    "start_y",
    "start_z",
    "end_x",
    "end_y",
    "end_z",
    "angle_to_b0_deg",
    "vein_id",
    "vein_shape",
    "parent_vein",
]
# Shape of the anatomical veins (randomized ones carry theirs: straight, curved, branch).
_ANATOMICAL_SHAPES = {"vein_medullary": "bent", "vein_pial": "surface_walk"}


def _to_scanner(p_s, pose):
    return np.atleast_2d(p_s) @ pose[:3, :3].T + pose[:3, 3]


def _voxel(affine, xyz):
    return np.round(np.linalg.inv(affine)[:3, :3] @ xyz + np.linalg.inv(affine)[:3, 3]).astype(int)


def cmb_table(lesions, pose, affine, diameters, shape, subvisible=frozenset()) -> pd.DataFrame:
    """One row per visible CMB whose centre lies inside the acquired field of view."""
    paths, radii = vein_paths(lesions)
    paths = [_to_scanner(p, pose) for p in paths]
    rows = []
    for les in lesions:
        if les.source.kind != "cmb" or les.source.label in subvisible:
            continue
        xyz = _to_scanner(les.source.points, pose)[0]
        i, j, k = _voxel(affine, xyz)
        if not all(0 <= v < n for v, n in zip((i, j, k), shape)):
            continue
        rows.append(
            [
                les.source.label,
                f"CMB{les.source.label}",
                *np.round(xyz, 3),
                i,
                j,
                k,
                round(les.source.radius_mm, 3),
                round(diameters.get(les.source.label, float("nan")), 3),
                round(les.source.chi_ppm, 4),
                les.mars_category,
                les.mars_region,
                les.hemisphere,
                les.atlas_label,
                *np.round(les.mni, 3),
                bool(
                    vein_clearance(xyz, paths, radii)[0] <= les.source.radius_mm + TOUCH_MARGIN_MM
                ),
            ]
        )
    return pd.DataFrame(rows, columns=CMB_COLUMNS)


def mimic_table(lesions, pose, affine, warp: SubjectWarp, subvisible=frozenset()) -> pd.DataFrame:
    """One row per vein (numbered ``vein_id`` 1, 2...; ``parent_vein`` for a branch), calcification,
    sub-visible CMB and air cavity; positions in scanner mm, angle to B0 (scanner z) of the
    start-to-end direction in 0-90 degrees. Columns that do not apply are empty (n/a)."""
    rows = []
    slice_axis = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    number: dict[int, int] = {}
    na = [np.nan] * 7 + [None, None, None]
    for les in lesions:
        src = les.source
        if src.kind == "vein":
            if src.extra["vein_id"] in number:
                continue
            number[src.extra["vein_id"]] = len(number) + 1
            path = _to_scanner(src.extra["path"], pose)
            d = path[-1] - path[0]
            length = float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum())
            d = d / max(np.linalg.norm(d), 1e-9)
            centre = path[len(path) // 2]
            through = bool(abs(d @ slice_axis) > 0.8)
            angle = float(np.degrees(np.arccos(min(abs(d[2]), 1.0))))
            shape = src.extra.get("shape", _ANATOMICAL_SHAPES.get(src.extra["type"]))
            parent = src.extra.get("parent")
            rows.append(
                [
                    src.extra["type"],
                    *centre,
                    *_voxel(affine, centre),
                    src.radius_mm,
                    length,
                    *d,
                    through,
                    src.chi_ppm,
                    *path[0],
                    *path[-1],
                    angle,
                    number[src.extra["vein_id"]],
                    shape,
                    None if parent is None else number[parent],
                ]
            )
        elif src.kind == "calcification" or (src.kind == "cmb" and src.label in subvisible):
            c = _to_scanner(src.points, pose)[0]
            rows.append(
                [
                    src.extra["type"] if src.kind == "calcification" else "cmb_subvisible",
                    *c,
                    *_voxel(affine, c),
                    src.radius_mm,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    False,
                    src.chi_ppm,
                    *na,
                ]
            )
    for name, (centre, radii) in AIR_CAVITIES.items():
        c = _to_scanner(warp.from_mni(np.asarray(centre, float)[None]), pose)[0]
        rows.append(
            [
                f"air_{name}",
                *c,
                *_voxel(affine, c),
                float(np.mean(radii)),
                0.0,
                0.0,
                0.0,
                0.0,
                False,
                9.4,
                *na,
            ]
        )
    df = pd.DataFrame(rows, columns=MIMIC_COLUMNS)
    for col in (
        "x_mm",
        "y_mm",
        "z_mm",
        "radius_mm",
        "length_mm",
        "direction_x",
        "direction_y",
        "direction_z",
        "chi_ppm",
        "start_x",
        "start_y",
        "start_z",
        "end_x",
        "end_y",
        "end_z",
        "angle_to_b0_deg",
    ):
        df[col] = df[col].astype(float).round(4)
    for col in ("vein_id", "parent_vein"):
        df[col] = df[col].astype("Int64")
    return df


def mni_coordinate_map(
    affine: np.ndarray, shape, pose: np.ndarray, warp: SubjectWarp, spacing_mm: float = 4.0
) -> nib.Nifti1Image:
    """MNI coordinates of a coarse grid spanning the acquisition, as a 4D image (last axis x, y, z)."""
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    step = np.maximum(np.round(spacing_mm / zooms), 1)
    n = np.ceil(np.asarray(shape) / step).astype(int)
    coarse_aff = affine @ np.diag([*step, 1.0])
    ijk = np.stack(np.meshgrid(*[np.arange(m) for m in n], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ coarse_aff[:3, :3].T + coarse_aff[:3, 3]
    inv_pose = np.linalg.inv(pose)
    mni = (
        warp.to_mni(world @ inv_pose[:3, :3].T + inv_pose[:3, 3]).reshape(*n, 3).astype(np.float32)
    )
    img = nib.Nifti1Image(mni, coarse_aff)
    img.set_qform(coarse_aff, code=1)
    img.set_sform(coarse_aff, code=1)
    return img


def write_truth(
    folder: Path, prefix: str, lesions, result, pose, warp, params: dict
) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    aff = result.affine
    paths = {
        "dseg": folder / f"{prefix}_label-CMB_dseg.nii.gz",
        "table": folder / f"{prefix}_label-CMB_dseg.tsv",
        "mimics": folder / f"{prefix}_mimics.tsv",
        "brain": folder / f"{prefix}_desc-brain_mask.nii.gz",
        "xfm": folder / f"{prefix}_from-scanner_to-{TEMPLATE_NAME}_mode-points_xfm.nii.gz",
        "params": folder / f"{prefix}_synth.json",
    }

    def img(data):
        im = nib.Nifti1Image(data, aff)
        im.set_qform(aff, code=1)
        im.set_sform(aff, code=1)
        return im

    save_nifti(img(result.brain_mask.astype(np.uint8)), paths["brain"])
    table = cmb_table(
        lesions,
        pose,
        aff,
        result.cmb_apparent_diameter,
        result.cmb_labels.shape,
        result.cmb_subvisible,
    )
    labels = np.where(
        np.isin(result.cmb_labels, table["index"].to_numpy()), result.cmb_labels, 0
    ).astype(np.int16)
    write_text(paths["table"], table.to_csv(sep="\t", index=False))
    save_nifti(img(labels), paths["dseg"])
    mimics = mimic_table(lesions, pose, aff, warp, result.cmb_subvisible)
    write_text(paths["mimics"], mimics.to_csv(sep="\t", index=False, na_rep="n/a"))
    save_nifti(mni_coordinate_map(aff, result.cmb_labels.shape, pose, warp), paths["xfm"])
    write_json(
        paths["xfm"].with_name(paths["xfm"].name.replace(".nii.gz", ".json")),
        {
            "Description": "For each voxel of this coarse grid (scanner RAS mm via its affine), the corresponding "
            f"{TEMPLATE_NAME} coordinates (mm, RAS) along the last axis (x, y, z). Interpolate linearly "
            "to map any scanner point to MNI.",
            "FromSpace": "scanner",
            "ToSpace": TEMPLATE_NAME,
        },
    )
    write_json(paths["params"], params)
    return paths
