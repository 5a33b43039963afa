"""``cmb crosssim``: a BIDS cohort from the second, independent simulator, with ground truth.

Per scan, under ``derivatives/cmb-truth/sub-<label>/<datatype>/`` (``<prefix>`` = ``sub-<label>``):

- ``<prefix>_label-CMB_dseg.nii.gz``: one label per microbleed on the acquired grid (the
  voxels at least 30 % inside its physical extent, and always its centre voxel);
- ``<prefix>_label-CMB_dseg.tsv``: one row per microbleed in the field of view, the
  columns of ``cmb synth``'s table (``mars_region``, ``atlas_label`` and the MNI
  coordinates are ``n/a``: the procedural head has no atlas) plus ``touches_vein``,
  ``visible`` (some voxel darkened below 0.8x), ``half_axis_*_mm`` and ``tissue``;
- ``<prefix>_veins.tsv``: one row per straight vein segment (scanner mm) with its radius,
  angle to B0 and whether each end is a free end of the vein;
- ``<prefix>_mimics.tsv``: calcifications and air cavities;
- ``<prefix>_desc-brain_mask.nii.gz``: parenchyma, CSF and ventricles on the acquired grid;
- ``<prefix>_synth.json``: every parameter of the scan (``simulator: cmb crosssim``;
  ``preset`` is what :func:`cmb.annotations.acquisition_label` reports).

The cohort is written to a hidden temporary folder next to ``--out`` and renamed into
place at the end: an interrupted run leaves no partial cohort.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

import cmb
from cmb.atomic import save_nifti, write_json, write_text
from cmb.crosssim.forward import PRESETS, Contrast, draw_acquisition, simulate_scan
from cmb.crosssim.geometry import CLASSES, random_head
from cmb.crosssim.sources import (
    parenchyma_pool,
    place_calcifications,
    place_microbleeds,
    place_veins,
)

__all__ = [
    "CrossSimOptions",
    "CrossSimError",
    "PRESET_NAMES",
    "TRUTH_PIPELINE",
    "SITES",
    "generate",
    "validate_options",
    "CMB_COLUMNS",
    "VEIN_COLUMNS",
]

TRUTH_PIPELINE = "cmb-truth"
PRESET_NAMES = (*PRESETS, "mixed")  # mixed: the three clinical presets in turn
_MIXED_CYCLE = ("swi-3t", "gre-3t", "gre-1.5t")
#: Scanner sites by field: (manufacturer, model, sign of a paramagnetic phase shift, phase storage).
SITES = {
    3.0: (("Siemens", "Prisma", "negative", "int12"), ("GE", "SIGNA Premier", "positive", "rad")),
    1.5: (("Siemens", "Aera", "negative", "int12"), ("GE", "Optima MR450w", "positive", "rad")),
}
#: Columns of the CMB table: those of ``cmb synth`` (same order), then the cross-simulator's own.
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
    "visible",
    "half_axis_1_mm",
    "half_axis_2_mm",
    "half_axis_3_mm",
    "tissue",
]
VEIN_COLUMNS = [
    "vein_id",
    "segment",
    "start_x",
    "start_y",
    "start_z",
    "end_x",
    "end_y",
    "end_z",
    "radius_mm",
    "angle_to_b0_deg",
    "is_vein_end_start",
    "is_vein_end_end",
    "branch",
    "kind",
    "chi_ppm",
]
MIMIC_COLUMNS = ["type", "x_mm", "y_mm", "z_mm", "i", "j", "k", "radius_mm", "chi_ppm"]


class CrossSimError(ValueError):
    """Invalid ``cmb crosssim`` request; the message is one line meant for the user."""


@dataclass(frozen=True)
class CrossSimOptions:
    out: Path
    n_subjects: int
    seed: int = 0
    cmb_free: int = 0  # extra subjects without any microbleed
    n_cmb: int | None = None  # fixed count per subject (default: 0-12)
    n_veins: int | None = None  # fixed count per subject (default: 15-30)
    preset: str = "mixed"
    overwrite: bool = False


def validate_options(o: CrossSimOptions) -> None:
    """Raise :class:`CrossSimError` for a request that cannot be honoured; writes nothing."""
    if o.n_subjects <= 0:
        raise CrossSimError(f"--n-subjects must be a positive integer, got {o.n_subjects}")
    if o.cmb_free < 0:
        raise CrossSimError(f"--cmb-free must be >= 0, got {o.cmb_free}")
    if o.preset not in PRESET_NAMES:
        raise CrossSimError(f"unknown preset {o.preset!r}; choose one of {', '.join(PRESET_NAMES)}")
    if o.n_cmb is not None and not 0 <= o.n_cmb <= 30:
        raise CrossSimError(f"--n-cmb must be between 0 and 30, got {o.n_cmb}")
    if o.n_veins is not None and not 0 <= o.n_veins <= 60:
        raise CrossSimError(f"--n-veins must be between 0 and 60, got {o.n_veins}")
    out = Path(o.out)
    if out.exists() and not out.is_dir():
        raise CrossSimError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not o.overwrite:
        raise CrossSimError(f"--out {out} is not empty; pass --overwrite to replace it")


def _nifti(data: np.ndarray, affine: np.ndarray, dtype=None) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if dtype is not None:
        img.set_data_dtype(dtype)  # float data with an integer dtype: nibabel stores scl_slope
    return img


def _bool(v) -> str:
    return "true" if bool(v) else "false"


def _voxel(affine: np.ndarray, xyz) -> np.ndarray:
    inv = np.linalg.inv(affine)
    return np.round(inv[:3, :3] @ np.asarray(xyz, float) + inv[:3, 3]).astype(int)


def _cmb_table(cmbs, head, result) -> tuple[pd.DataFrame, list]:
    """Rows of the microbleeds whose centre voxel is in the image, and those outside."""
    rows, outside = [], []
    shape = result.cmb_labels.shape
    for m in cmbs:
        i, j, k = _voxel(result.affine, m.centre)
        if not all(0 <= v < n for v, n in zip((i, j, k), shape)):
            outside.append(m)
            continue
        tissue = CLASSES[int(head.classify(m.centre[None])[0])]
        rows.append(
            [
                m.label,
                f"CMB{m.label}",
                *np.round(m.centre, 3),
                i,
                j,
                k,
                round(m.radius_mm, 3),
                round(result.apparent_diameter_mm.get(m.label, 0.0), 3),
                round(m.chi_ppm, 4),
                m.mars_category,
                "n/a",
                m.hemisphere,
                "n/a",
                "n/a",
                "n/a",
                "n/a",
                _bool(m.touches_vein),
                _bool(result.visible.get(m.label, False)),
                *np.round(m.half_axes, 3),
                tissue,
            ]
        )
    return pd.DataFrame(rows, columns=CMB_COLUMNS), outside


def _vein_table(veins) -> pd.DataFrame:
    rows = []
    for v in veins:
        for r in v.segments():
            rows.append(
                [
                    v.vein_id,
                    r["segment"],
                    *np.round(r["start"], 3),
                    *np.round(r["end"], 3),
                    round(r["radius_mm"], 3),
                    round(r["angle_to_b0_deg"], 2),
                    _bool(r["is_vein_end_start"]),
                    _bool(r["is_vein_end_end"]),
                    r["branch"],
                    r["kind"],
                    round(r["chi_ppm"], 4),
                ]
            )
    return pd.DataFrame(rows, columns=VEIN_COLUMNS)


def _mimic_table(calcs, head, outside_cmbs, affine) -> pd.DataFrame:
    rows = []
    for c in calcs:
        rows.append(
            [
                f"calcification_{c.site}",
                *np.round(c.centre, 3),
                *_voxel(affine, c.centre),
                round(c.radius_mm, 3),
                round(c.chi_ppm, 4),
            ]
        )
    for name, centre, radius in head.cavities:
        xyz = head.to_scanner(centre)[0]
        rows.append([f"air_{name}", *np.round(xyz, 3), *_voxel(affine, xyz), round(radius, 3), 9.2])
    for m in outside_cmbs:  # outside the slab: not in the image, not in the truth
        rows.append(
            [
                "cmb_outside_fov",
                *np.round(m.centre, 3),
                *_voxel(affine, m.centre),
                round(m.radius_mm, 3),
                round(m.chi_ppm, 4),
            ]
        )
    return pd.DataFrame(rows, columns=MIMIC_COLUMNS)


def _phase_stored(phase: np.ndarray, units: str) -> tuple[np.ndarray, dict]:
    if units == "int12":  # Siemens: -4096..4095 for -pi..pi
        return np.round(phase / np.pi * 4096).clip(-4096, 4095).astype(np.int16), {
            "Units": "arbitrary"
        }
    return phase.astype(np.float32), {"Units": "rad"}


def _tsv(df: pd.DataFrame) -> str:
    return df.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n")


def _subject(o: CrossSimOptions, n: int, cmb_free: bool, root: Path, width: int) -> dict:
    sub = f"{n:0{width}d}"
    rng = np.random.default_rng([o.seed, n])
    preset = _MIXED_CYCLE[(n - 1) % len(_MIXED_CYCLE)] if o.preset == "mixed" else o.preset
    acq = draw_acquisition(preset, rng)
    manufacturer, model, para, units = SITES[acq.b0][int(rng.integers(len(SITES[acq.b0])))]
    t0 = time.perf_counter()
    # 0.5 degree direction maps (0.6 mm at the cortex) for sub-millimetre voxels, 1 degree otherwise
    head = random_head(rng, map_shape=(361, 721) if min(acq.voxel_mm) < 1.0 else (181, 361))
    contrast = Contrast().jittered(rng)
    pool = parenchyma_pool(head, rng)
    veins = place_veins(
        head, rng, o.n_veins if o.n_veins is not None else int(rng.integers(15, 31)), pool[0]
    )
    calcs = place_calcifications(head, rng)
    n_cmb = 0 if cmb_free else (o.n_cmb if o.n_cmb is not None else int(rng.integers(0, 13)))
    cmbs = place_microbleeds(head, rng, n_cmb, veins, calcs, pool)
    result = simulate_scan(head, veins, cmbs, calcs, acq, contrast, rng, paramagnetic_phase=para)

    prefix = f"sub-{sub}"
    raw = root / prefix / acq.datatype
    truth = root / "derivatives" / TRUTH_PIPELINE / prefix / acq.datatype
    sidecar = {
        "EchoTime": acq.te,
        "MagneticFieldStrength": acq.b0,
        "Manufacturer": manufacturer,
        "ManufacturersModelName": model,
        "InstitutionName": "cmb crosssim",
        "RepetitionTime": acq.tr,
        "FlipAngle": acq.flip_deg,
        "SliceThickness": acq.voxel_mm[2],
        "MRAcquisitionType": "3D",
        "ReceiveCoilActiveElements": f"{acq.n_coils} channels, root-sum-of-squares",
    }
    mag_path = raw / f"{prefix}_part-mag_GRE.nii.gz"
    save_nifti(_nifti(result.magnitude.astype(np.float32), result.affine, np.uint16), mag_path)
    write_json(
        mag_path.with_name(mag_path.name.replace(".nii.gz", ".json")),
        {**sidecar, "ImageType": ["ORIGINAL", "PRIMARY", "M"]},
    )
    phase, unit_keys = _phase_stored(result.phase, units)
    phase_path = raw / f"{prefix}_part-phase_GRE.nii.gz"
    save_nifti(_nifti(phase, result.affine), phase_path)
    write_json(
        phase_path.with_name(phase_path.name.replace(".nii.gz", ".json")),
        {
            **sidecar,
            "ImageType": ["ORIGINAL", "PRIMARY", "P"],
            **unit_keys,
            "PhaseDescription": (
                "wrapped phase of the coil-combined signal referenced to a virtual body coil, "
                + (
                    "integers -4096..4095 for -pi..pi"
                    if units == "int12"
                    else "radians in (-pi, pi]"
                )
                + f"; a paramagnetic shift is {para} ({manufacturer} convention)"
            ),
        },
    )
    images = {"mag": str(mag_path.relative_to(root)), "phase": str(phase_path.relative_to(root))}

    table, outside = _cmb_table(cmbs, head, result)
    labels = np.where(
        np.isin(result.cmb_labels, table["index"].to_numpy()), result.cmb_labels, 0
    ).astype(np.int16)
    save_nifti(_nifti(labels, result.affine), truth / f"{prefix}_label-CMB_dseg.nii.gz")
    write_text(truth / f"{prefix}_label-CMB_dseg.tsv", _tsv(table))
    write_text(truth / f"{prefix}_veins.tsv", _tsv(_vein_table(veins)))
    write_text(
        truth / f"{prefix}_mimics.tsv", _tsv(_mimic_table(calcs, head, outside, result.affine))
    )
    save_nifti(
        _nifti(result.brain_mask.astype(np.uint8), result.affine),
        truth / f"{prefix}_desc-brain_mask.nii.gz",
    )
    params = {
        "simulator": "cmb crosssim",
        "version": cmb.__version__,
        "seed": o.seed,
        "participant_id": prefix,
        "preset": acq.preset,
        "acquisition": asdict(acq),
        "affine": result.affine,
        "manufacturer": manufacturer,
        "model": model,
        "paramagnetic_phase": para,
        "phase_units": units,
        "noise_sigma_per_coil": result.noise_sigma,
        "cmb_free": cmb_free,
        "head": {
            "rotation": head.rotation,
            "translation_mm": head.translation,
            "cerebrum_half_axes_mm": head.half_axes,
            "cavities": [
                {"name": nm, "centre_head_mm": c, "radius_mm": r} for nm, c, r in head.cavities
            ],
            "sulcus_halfwidth_mm": head.sulcus_halfwidth,
            "tentorial_gap_mm": head.tentorial_gap,
        },
        "contrast": asdict(contrast),
        "n_cmb": len(table),
        "n_cmb_placed": len(cmbs),
        "n_veins": len(veins),
        "n_vein_segments": sum(len(v.segments()) for v in veins),
        "n_calcifications": len(calcs),
        "monte_carlo_voxels": result.n_mc_voxels,
        "images": images,
    }  # no timings: a seed gives byte-identical files
    write_json(truth / f"{prefix}_synth.json", params)
    return {
        "participant_id": prefix,
        "age": int(rng.integers(55, 90)),
        "sex": "F" if rng.random() < 0.5 else "M",
        "preset": acq.preset,
        "manufacturer": manufacturer,
        "n_cmb": len(table),
        "cmb_free": _bool(cmb_free),
        "seconds": round(time.perf_counter() - t0, 1),
        "timing": result.seconds,
    }


def _dataset_files(root: Path, participants: pd.DataFrame, command: str, seed: int) -> None:
    generated = [
        {
            "Name": "cmb crosssim",
            "Version": cmb.__version__,
            "CodeURL": "https://github.com/cmb-project/cmb",
        }
    ]
    write_json(
        root / "dataset_description.json",
        {
            "Name": "cmb cross-simulator SWI/T2*-GRE cohort",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "License": "CC0",
            "GeneratedBy": generated,
        },
    )
    write_text(root / "participants.tsv", _tsv(participants))
    write_json(
        root / "participants.json",
        {
            "age": {"Description": "age at scan", "Units": "year"},
            "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
            "preset": {"Description": "acquisition preset of the cross-simulator"},
            "manufacturer": {"Description": "simulated vendor (phase units and sign convention)"},
            "n_cmb": {"Description": "microbleeds in the field of view (the truth)"},
            "cmb_free": {"Description": "subject generated without microbleeds (--cmb-free)"},
        },
    )
    write_text(
        root / "README",
        (
            "SWI / T2*-GRE cohort generated by cmb crosssim, the second simulator (procedural head, analytic\n"
            "fields, Monte-Carlo sub-voxel signal, multi-coil noise), for cross-simulator validation.\n\n"
            f"Command: {command}\nSeed: {seed}\n\n"
            "Ground truth (CMB labels and tables, vein segments, mimics, brain masks, parameters) is in\n"
            "derivatives/cmb-truth/.\n"
        ),
    )
    write_json(
        root / "derivatives" / TRUTH_PIPELINE / "dataset_description.json",
        {
            "Name": "cmb crosssim ground truth",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": generated,
            "SourceDatasets": [{"URL": "../../"}],
        },
    )


def generate(o: CrossSimOptions, log=print) -> pd.DataFrame:
    """Generate the cohort described by ``o`` into ``o.out`` (atomically); returns the participants table."""
    validate_options(o)
    out = Path(o.out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    command = _command(o)
    total = o.n_subjects + o.cmb_free
    width = max(2, len(str(total)))
    try:
        rows = []
        for n in range(1, total + 1):
            row = _subject(o, n, n > o.n_subjects, tmp, width)
            rows.append(row)
            t = row["timing"]
            log(
                f"{row['participant_id']}: {row['preset']}, {row['n_cmb']} CMB(s) ({row['seconds']:.1f} s: "
                f"tissue {t['base']:.1f}, sources {t['monte_carlo']:.1f}, coils {t['receive']:.1f})"
            )
        participants = pd.DataFrame(rows).drop(columns=["seconds", "timing"])
        _dataset_files(tmp, participants, command, o.seed)
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "cohort")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return participants


def _command(o: CrossSimOptions) -> str:
    """The command line that regenerates this cohort."""
    args = [
        "--out",
        str(o.out),
        "--n-subjects",
        str(o.n_subjects),
        "--seed",
        str(o.seed),
        "--preset",
        o.preset,
    ]
    for flag, value in (
        ("--cmb-free", o.cmb_free or None),
        ("--n-cmb", o.n_cmb),
        ("--n-veins", o.n_veins),
    ):
        if value is not None:
            args += [flag, str(value)]
    return "cmb crosssim " + shlex.join(args)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
