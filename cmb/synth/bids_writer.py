"""Write synthetic scans as BIDS, in the naming variants found in the wild, with ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

import cmb
from cmb.atomic import save_nifti, write_json, write_text
from cmb.synth.physics import homodyne_phase
from cmb.synth.presets import Acquisition, Site

__all__ = ["ScanEntities", "write_scan", "write_dataset_files", "TRUTH_PIPELINE"]

TRUTH_PIPELINE = "cmb-truth"


@dataclass(frozen=True)
class ScanEntities:
    subject: str
    session: str | None = None
    run: int | None = None

    @property
    def prefix(self) -> str:
        parts = [f"sub-{self.subject}"]
        if self.session:
            parts.append(f"ses-{self.session}")
        if self.run is not None:
            parts.append(f"run-{self.run}")
        return "_".join(parts)

    def folder(self, root: Path, datatype: str) -> Path:
        p = Path(root) / f"sub-{self.subject}"
        if self.session:
            p = p / f"ses-{self.session}"
        return p / datatype


def _image(data: np.ndarray, affine: np.ndarray, dtype=None) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if dtype is not None:
        img.header.set_data_dtype(dtype)
    return img


def _scaled_uint(data: np.ndarray, top: float = 4000.0, ref: float | None = None) -> np.ndarray:
    """Magnitude as scanner-like unsigned integers (12-bit range)."""
    ref = ref or float(np.percentile(data, 99.9)) or 1.0
    return np.clip(np.round(data * (top / ref)), 0, 65535).astype(np.uint16)


def _phase_stored(phase: np.ndarray, units: str) -> tuple[np.ndarray, dict]:
    if units == "int12":  # Siemens: -4096..4095 for -pi..pi
        return np.round(phase / np.pi * 4096).clip(-4096, 4095).astype(np.int16), {
            "Units": "arbitrary"
        }
    if units == "deg":
        return np.degrees(phase).astype(np.float32), {"Units": "deg"}
    return phase.astype(np.float32), {"Units": "rad"}


def _sidecar(acq: Acquisition, site: Site, te: float, image_type: list[str], extra=None) -> dict:
    return {
        "EchoTime": round(te, 6),
        "MagneticFieldStrength": site.b0,
        "Manufacturer": site.manufacturer,
        "ManufacturersModelName": site.model,
        "InstitutionName": site.name,
        "RepetitionTime": acq.tr,
        "FlipAngle": acq.flip_deg,
        "SliceThickness": acq.voxel_mm[2],
        "ImageType": image_type,
        **(extra or {}),
    }


def write_scan(
    root: Path,
    ent: ScanEntities,
    acq: Acquisition,
    site: Site,
    result,
    phase_units: str,
    phase_filter: str,
    paramagnetic_phase: str | None = None,
) -> dict[str, Path]:
    """Write the images of one scan under ``root`` in the naming variant ``acq.layout``.

    ``paramagnetic_phase`` is the sign the phase was simulated with (default: the
    site's); the vendor SWI's phase mask uses it, as a scanner computes SWI before any
    converter could flip the stored phase.

    Returns the written paths by role (``mag``, ``phase``, ``swi``...).
    """
    aff = result.affine
    written: dict[str, Path] = {}
    ref = float(np.percentile(result.magnitude[0], 99.9))
    phases = result.phase
    if phase_filter == "hp":
        phases = [
            homodyne_phase(m * np.exp(1j * p), acq.voxel_mm)
            for m, p in zip(result.magnitude, result.phase)
        ]

    def save(datatype, name, data, sidecar):
        folder = ent.folder(root, datatype)
        path = folder / f"{ent.prefix}_{name}.nii.gz"
        save_nifti(_image(data, aff), path)
        write_json(path.with_name(path.name.replace(".nii.gz", ".json")), sidecar)
        return path

    layout = acq.layout
    if layout == "MEGRE":
        for e, te in enumerate(acq.tes, start=1):
            written[f"mag{e}"] = save(
                "anat",
                f"echo-{e}_part-mag_MEGRE",
                _scaled_uint(result.magnitude[e - 1], ref=ref),
                _sidecar(acq, site, te, ["ORIGINAL", "PRIMARY", "M"]),
            )
            data, units = _phase_stored(phases[e - 1], phase_units)
            written[f"phase{e}"] = save(
                "anat",
                f"echo-{e}_part-phase_MEGRE",
                data,
                _sidecar(acq, site, te, ["ORIGINAL", "PRIMARY", "P"], units),
            )
        return written
    te = acq.tes[0]
    mag = _scaled_uint(result.magnitude[0], ref=ref)
    if layout == "T2starw":
        written["mag"] = save(
            "anat", "T2starw", mag, _sidecar(acq, site, te, ["ORIGINAL", "PRIMARY", "M"])
        )
    elif layout == "GRE":
        written["mag"] = save(
            "swi", "part-mag_GRE", mag, _sidecar(acq, site, te, ["ORIGINAL", "PRIMARY", "M"])
        )
        data, units = _phase_stored(phases[0], phase_units)
        written["phase"] = save(
            "swi",
            "part-phase_GRE",
            data,
            _sidecar(acq, site, te, ["ORIGINAL", "PRIMARY", "P"], units),
        )
    elif layout in ("swi-swi", "swi-anat"):
        # Vendor SWI: magnitude times a phase mask that suppresses paramagnetic phase.
        hp = homodyne_phase(result.magnitude[0] * np.exp(1j * result.phase[0]), acq.voxel_mm)
        para = hp if (paramagnetic_phase or site.paramagnetic_phase) == "positive" else -hp
        mask = np.clip(1.0 - para / np.pi, 0.0, 1.0) ** 4
        swi = _scaled_uint(result.magnitude[0] * mask, ref=ref)
        datatype = "swi" if layout == "swi-swi" else "anat"
        written["mag"] = save(
            datatype, "swi", swi, _sidecar(acq, site, te, ["DERIVED", "PRIMARY", "SWI"])
        )
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return written


def write_t1w(
    root: Path, ent: ScanEntities, site: Site, data: np.ndarray, affine: np.ndarray
) -> Path:
    path = ent.folder(root, "anat") / f"{ent.prefix}_T1w.nii.gz"
    save_nifti(_image(_scaled_uint(data), affine), path)
    write_json(
        path.with_name(path.name.replace(".nii.gz", ".json")),
        {
            "MagneticFieldStrength": site.b0,
            "Manufacturer": site.manufacturer,
            "RepetitionTime": 2.3,
            "InversionTime": 0.9,
            "EchoTime": 0.00298,
            "FlipAngle": 9,
        },
    )
    return path


PARCELLATION_PIPELINE = "synth-parcellation"


def write_parcellation(
    root: Path, ent: ScanEntities, labels: np.ndarray, affine: np.ndarray, names: dict[int, str]
) -> Path:
    """The T1w's true aparc+aseg labels, the way fMRIPrep names a FreeSurfer parcellation in T1w space
    (``derivatives/synth-parcellation/sub-X/anat/sub-X_desc-aparcaseg_dseg.nii.gz`` + its ``.tsv``)."""
    base = root / "derivatives" / PARCELLATION_PIPELINE
    path = ent.folder(base, "anat") / f"{ent.prefix}_desc-aparcaseg_dseg.nii.gz"
    save_nifti(_image(labels.astype(np.int16), affine, np.int16), path)
    present = sorted(int(v) for v in np.unique(labels) if v != 0)
    write_text(
        path.with_name(path.name.replace(".nii.gz", ".tsv")),
        "index\tname\n" + "".join(f"{v}\t{names[v]}\n" for v in present),
    )
    desc = base / "dataset_description.json"
    if not desc.is_file():
        write_json(
            desc,
            {
                "Name": "cmb synth: true aparc+aseg labels of the T1w scans",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "cmb synth", "Version": cmb.__version__}],
                "SourceDatasets": [{"URL": "../../"}],
            },
        )
    return path


def write_dataset_files(root: Path, participants: pd.DataFrame, command: str, seed: int) -> None:
    """dataset_description.json, participants.tsv/json and README, for the raw and truth datasets."""
    generated = [
        {
            "Name": "cmb synth",
            "Version": cmb.__version__,
            "CodeURL": "https://github.com/cmb-project/cmb",
        }
    ]
    write_json(
        root / "dataset_description.json",
        {
            "Name": "cmb synthetic SWI/T2*-GRE cohort",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "License": "CC0",
            "GeneratedBy": generated,
        },
    )
    write_text(root / "participants.tsv", participants.to_csv(sep="\t", index=False, na_rep="n/a"))
    write_json(
        root / "participants.json",
        {
            "age": {"Description": "age at scan", "Units": "year"},
            "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
            "site": {"Description": "scanner site"},
            "cohort_profile": {"Description": "CMB location prior used by the generator"},
        },
    )
    write_text(
        root / "README",
        (
            "Synthetic SWI / T2*-GRE cohort generated by cmb synth.\n\n"
            f"Command: {command}\nSeed: {seed}\n\n"
            "Ground truth (CMB masks and tables, mimics, transforms) is in derivatives/cmb-truth/.\n"
        ),
    )
    truth = root / "derivatives" / TRUTH_PIPELINE
    write_json(
        truth / "dataset_description.json",
        {
            "Name": "cmb synthetic ground truth",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": generated,
            "SourceDatasets": [{"URL": "../../"}],
        },
    )
