"""The SWI/GRE layouts of public BIDS datasets: what the planner chooses, or the exact refusal.

Each fixture copies the file names (and, where they decide, the sidecar fields) of a
real dataset; the dataset is named in the table. Planning reads names, sidecars
and headers only, so most fixtures are empty files; the ones whose outcome depends
on the voxels (quality choice, 4D echoes, slice spacing) are small real images.
"""

import json

import nibabel as nib
import numpy as np
import pytest

from cmb.failures import InputDataError
from cmb.ingest import ingest_subject, main
from cmb.ingest_plan import format_plan, plan_inputs

SIEMENS_MAG = {
    "Manufacturer": "Siemens",
    "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
    "EchoTime": 0.02,
}
SIEMENS_PHASE = {
    "Manufacturer": "Siemens",
    "ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"],
    "EchoTime": 0.02,
}

# (id, source dataset, files, sidecars, kind, magnitude names, phase names); {s} is the subject
LAYOUTS = [
    (
        "bep004-swi-gre-2echo",
        "OpenNeuro ds004712 (ON-Harmony), swi/ folder, BEP004 names",
        [f"swi/{{s}}_ses-1_echo-{e}_part-{p}_GRE.nii.gz" for e in (1, 2) for p in ("mag", "phase")],
        {},
        "megre",
        ["{s}_ses-1_echo-1_part-mag_GRE.nii.gz", "{s}_ses-1_echo-2_part-mag_GRE.nii.gz"],
        ["{s}_ses-1_echo-1_part-phase_GRE.nii.gz", "{s}_ses-1_echo-2_part-phase_GRE.nii.gz"],
    ),
    (
        "bep004-single-echo",
        "ds004712-style swi/ with one echo-1 pair",
        ["swi/{s}_echo-1_part-mag_GRE.nii.gz", "swi/{s}_echo-1_part-phase_GRE.nii.gz"],
        {},
        "gre_phase",
        ["{s}_echo-1_part-mag_GRE.nii.gz"],
        ["{s}_echo-1_part-phase_GRE.nii.gz"],
    ),
    (
        "anat-t2starw-echoes",
        "ds004712-style anat/ echo-N part-mag/phase _T2starw",
        [
            f"anat/{{s}}_echo-{e}_part-{p}_T2starw.nii.gz"
            for e in (1, 2, 3)
            for p in ("mag", "phase")
        ],
        {},
        "megre",
        [f"{{s}}_echo-{e}_part-mag_T2starw.nii.gz" for e in (1, 2, 3)],
        [f"{{s}}_echo-{e}_part-phase_T2starw.nii.gz" for e in (1, 2, 3)],
    ),
    (
        "rec-norm-coil",
        "ON-Harmony: prescan-normalized (rec-norm) and single-coil (coil-N) images",
        [
            "swi/{s}_rec-norm_echo-1_part-mag_GRE.nii.gz",
            "swi/{s}_rec-norm_echo-1_part-phase_GRE.nii.gz",
            "swi/{s}_coil-1_echo-1_part-mag_GRE.nii.gz",
            "swi/{s}_coil-2_echo-1_part-mag_GRE.nii.gz",
        ],
        {},
        "gre_phase",
        ["{s}_rec-norm_echo-1_part-mag_GRE.nii.gz"],
        ["{s}_rec-norm_echo-1_part-phase_GRE.nii.gz"],
    ),
    (
        "suffix-T2Starw",
        "capitalised suffix written by a converter heuristic",
        ["anat/{s}_T2Starw.nii.gz"],
        {},
        "t2starw",
        ["{s}_T2Starw.nii.gz"],
        None,
    ),
    (
        "suffix-SWI",
        "upper-case SWI suffix",
        ["anat/{s}_SWI.nii.gz"],
        {},
        "swi",
        ["{s}_SWI.nii.gz"],
        None,
    ),
    (
        "swi-folder-lower",
        "heudiconv heuristics: swi/{s}_swi next to part-mag/part-phase _GRE and _minIP",
        [
            "swi/{s}_swi.nii.gz",
            "swi/{s}_part-mag_GRE.nii.gz",
            "swi/{s}_part-phase_GRE.nii.gz",
            "swi/{s}_minIP.nii.gz",
        ],
        {},
        "swi_phase",
        ["{s}_swi.nii.gz"],
        ["{s}_part-phase_GRE.nii.gz"],
    ),
    (
        "part-capitalised",
        "heudiconv heuristic writing part-Mag_GRE / part-Phase_GRE",
        ["anat/{s}_part-Mag_GRE.nii.gz", "anat/{s}_part-Phase_GRE.nii.gz"],
        {},
        "gre_phase",
        ["{s}_part-Mag_GRE.nii.gz"],
        ["{s}_part-Phase_GRE.nii.gz"],
    ),
    (
        "acq-qsm-magnitude",
        "QSM protocol exported as acq-qsm_magnitude / acq-qsm_phase",
        ["anat/{s}_acq-qsm_magnitude.nii.gz", "anat/{s}_acq-qsm_phase.nii.gz"],
        {},
        "gre_phase",
        ["{s}_acq-qsm_magnitude.nii.gz"],
        ["{s}_acq-qsm_phase.nii.gz"],
    ),
    (
        "acq-mag-acq-phase",
        "MPI-LEMON, OpenNeuro ds000221: ses-01/anat acq-mag_GRE / acq-phase_GRE",
        [
            "ses-01/anat/{s}_ses-01_acq-mag_GRE.nii.gz",
            "ses-01/anat/{s}_ses-01_acq-phase_GRE.nii.gz",
        ],
        {},
        "gre_phase",
        ["{s}_ses-01_acq-mag_GRE.nii.gz"],
        ["{s}_ses-01_acq-phase_GRE.nii.gz"],
    ),
    (
        "acq-mag-t2star",
        "MS rim-lesion heuristic: acq-mag_T2star / acq-phase_T2star",
        ["anat/{s}_acq-mag_T2star.nii.gz", "anat/{s}_acq-phase_T2star.nii.gz"],
        {},
        "gre_phase",
        ["{s}_acq-mag_T2star.nii.gz"],
        ["{s}_acq-phase_T2star.nii.gz"],
    ),
    (
        "part-phase-t2starw",
        "part-mag_T2starw next to part-phase_T2starw",
        ["anat/{s}_part-mag_T2starw.nii.gz", "anat/{s}_part-phase_T2starw.nii.gz"],
        {},
        "gre_phase",
        ["{s}_part-mag_T2starw.nii.gz"],
        ["{s}_part-phase_T2starw.nii.gz"],
    ),
    (
        "imagetype-decides",
        "no part in the names: the sidecar ImageType (Siemens M / P) tells them apart",
        ["anat/{s}_run-1_GRE.nii.gz", "anat/{s}_run-2_GRE.nii.gz"],
        {"anat/{s}_run-1_GRE.json": SIEMENS_MAG, "anat/{s}_run-2_GRE.json": SIEMENS_PHASE},
        "gre",
        ["{s}_run-1_GRE.nii.gz"],
        None,
    ),
    (
        "bp-cspine",
        "a spine scan in the same session (bp- entity, BodyPartExamined CSPINE)",
        [
            "anat/{s}_bp-cspine_T2starw.nii.gz",
            "anat/{s}_acq-spine_T2starw.nii.gz",
            "anat/{s}_acq-brain_T2starw.nii.gz",
        ],
        {
            "anat/{s}_acq-spine_T2starw.json": {"BodyPartExamined": "CSPINE"},
            "anat/{s}_acq-brain_T2starw.json": {"BodyPartExamined": "BRAIN"},
        },
        "t2starw",
        ["{s}_acq-brain_T2starw.nii.gz"],
        None,
    ),
    (
        "rec-minIP",
        "Siemens SWI series with its minimum-intensity projection (rec-minIP, ImageType MNIP)",
        [
            "anat/{s}_rec-minIP_swi.nii.gz",
            "anat/{s}_acq-proj_swi.nii.gz",
            "anat/{s}_rec-swi_swi.nii.gz",
        ],
        {
            "anat/{s}_acq-proj_swi.json": {
                "ImageType": ["DERIVED", "PRIMARY", "MNIP", "NORM", "DIS2D"]
            }
        },
        "swi",
        ["{s}_rec-swi_swi.nii.gz"],
        None,
    ),
]


@pytest.fixture(scope="module")
def layout_plan(tmp_path_factory):
    """One dataset with one subject per layout, planned once."""
    root = tmp_path_factory.mktemp("layouts") / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "layouts", "BIDSVersion": "1.10.0"}')
    for i, (_, _, files, sidecars, *_) in enumerate(LAYOUTS):
        s = f"sub-L{i:02d}"
        for rel in files:
            path = root / s / rel.format(s=s)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        for rel, meta in sidecars.items():
            (root / s / rel.format(s=s)).write_text(json.dumps(meta))
    records = plan_inputs(root, root.parent / "db")
    return {r.subject: r for r in records}


@pytest.mark.parametrize("i", range(len(LAYOUTS)), ids=[layout[0] for layout in LAYOUTS])
def test_layout_is_planned_right(layout_plan, i):
    _, source, _, _, kind, mag, phase = LAYOUTS[i]
    s = f"sub-L{i:02d}"
    rec = layout_plan[f"L{i:02d}"]
    assert rec.kind == kind, f"{source}: {rec.reason}"
    assert [p.rsplit("/", 1)[1] for p in rec.magnitude] == [m.format(s=s) for m in mag]
    got_phase = None if rec.phase is None else [p.rsplit("/", 1)[1] for p in rec.phase]
    assert got_phase == (None if phase is None else [p.format(s=s) for p in phase])


def test_what_is_ruled_out_is_named_with_the_reason(layout_plan):
    ignored = {name: rec.ignored for name, rec in layout_plan.items()}
    coil = "\n".join(ignored["L03"])
    assert (
        "coil-1_echo-1_part-mag_GRE.nii.gz: a single-coil image (coil-1)" in coil
        and "coil-2" in coil
    )
    spine = "\n".join(ignored["L13"])
    assert "bp-cspine_T2starw.nii.gz: not a head scan (bp-cspine)" in spine
    assert "acq-spine_T2starw.nii.gz: not a head scan (sidecar BodyPartExamined 'CSPINE')" in spine
    assert "setting ingest.body_parts" in spine
    proj = "\n".join(ignored["L14"])
    assert "rec-minIP_swi.nii.gz: a projection image (rec-minIP), never a valid input" in proj
    assert "acq-proj_swi.nii.gz: a projection image (ImageType" in proj
    assert "part-phase image without its magnitude" not in "\n".join(ignored["L06"])
    assert ignored["L12"] == ("sub-L12_run-2_GRE.nii.gz: a phase image without its magnitude",)
    shown = format_plan(list(layout_plan.values()))
    assert "sub-L03: gre_phase" in shown and "ignored: sub-L03_coil-1" in shown


def test_imagetype_phase_is_never_chosen_as_the_magnitude(layout_plan):
    rec = layout_plan["L12"]
    assert all("run-2" not in p for p in rec.magnitude)
    assert "sub-L12_run-1_GRE.nii.gz: magnitude by its sidecar ImageType" in rec.reason


def test_a_name_contradicting_imagetype_is_noted(tmp_path):
    root = _dataset(
        tmp_path,
        ["sub-01/anat/sub-01_part-mag_GRE.nii.gz", "sub-01/anat/sub-01_part-phase_GRE.nii.gz"],
        {"sub-01/anat/sub-01_part-mag_GRE.json": SIEMENS_PHASE},
    )
    (rec,) = plan_inputs(root, tmp_path / "db")
    assert rec.kind == "gre_phase" and rec.magnitude[0].endswith("part-mag_GRE.nii.gz")
    assert "the name says mag (part- entity) but the sidecar ImageType" in rec.reason


def test_only_projections_or_spine_is_a_refusal_naming_the_files(tmp_path):
    root = _dataset(
        tmp_path,
        ["sub-01/anat/sub-01_rec-minIP_swi.nii.gz", "sub-02/anat/sub-02_bp-cspine_T2starw.nii.gz"],
        {},
    )
    one, two = plan_inputs(root, tmp_path / "db")
    assert (
        one.kind is None
        and "ruled out: sub-01_rec-minIP_swi.nii.gz: a projection image" in one.reason
    )
    assert two.kind is None and "(setting ingest.body_parts)" in two.reason
    (two,) = plan_inputs(
        root, tmp_path / "db", participant_label="02", body_parts=["BRAIN", "CSPINE"]
    )
    assert two.kind == "t2starw"  # the setting named in the refusal changes the outcome


# --------------------------------------------------------------------------- ds004332: repeats, pins


def _ds004332_t2starw(root, sub="sub-01"):
    """ds004332 (bids-examples skeleton): 2D GRE T2starw, task nodding/still x PMC on/off."""
    names = [
        f"{sub}_task-nodding_acq-t2starPMCoff_rec-wre_T2starw",
        f"{sub}_task-nodding_acq-t2starPMCon_rec-wre_T2starw",
        f"{sub}_task-still_acq-t2starPMCoff_rec-wore_T2starw",
        f"{sub}_task-still_acq-t2starPMCon_rec-wore_T2starw",
    ]
    t1w = (
        [
            f"{sub}_task-nodding_acq-{a}PMC{o}_rec-{r}_T1w"
            for a in ("mprage", "t1tirm")
            for o in ("off", "on")
            for r in ("wore", "wre")
        ]
        + [
            f"{sub}_task-shaking_acq-mpragePMC{o}_rec-{r}_T1w"
            for o in ("off", "on")
            for r in ("wore", "wre")
        ]
        + [
            f"{sub}_task-still_acq-{a}PMC{o}_rec-wore_T1w"
            for a in ("mprage", "t1tirm")
            for o in ("off", "on")
        ]
    )
    meta = {
        "Manufacturer": "Siemens",
        "BodyPartExamined": "BRAIN",
        "MRAcquisitionType": "2D",
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
        "SliceThickness": 5,
        "SpacingBetweenSlices": 6,
        "EchoTime": 0.02,
        "RepetitionTime": 0.7,
        "FlipAngle": 20,
    }
    files = [f"{sub}/anat/{n}.nii" for n in names + t1w]
    sidecars = {f"{sub}/anat/{n}.json": meta for n in names}
    return _dataset(root, files, sidecars), names, t1w


def test_ds004332_repeats_all_reach_ingestion_and_a_pin_decides(tmp_path):
    root, names, t1w = _ds004332_t2starw(tmp_path)
    (rec,) = plan_inputs(root, tmp_path / "db")
    assert rec.kind == "t2starw" and len(rec.alternatives) == 4 and len(rec.t1w_alternatives) == 16
    assert "ingestion keeps the one with the least ghosting" in rec.reason
    assert "pin one with ingest.pin_entities.image" in rec.reason
    pins = {
        "image": {"task": "still", "acquisition": "t2starPMCon"},
        "t1w": {"task": "still", "acq": "mpragePMCon"},
    }
    (rec,) = plan_inputs(root, tmp_path / "db", pin_entities=pins)
    assert rec.magnitude[0].endswith("sub-01_task-still_acq-t2starPMCon_rec-wore_T2starw.nii")
    assert rec.alternatives == () and rec.t1w_alternatives == ()
    assert rec.t1w.endswith("sub-01_task-still_acq-mpragePMCon_rec-wore_T1w.nii")
    assert "pinned by ingest.pin_entities.image" in rec.reason
    (rec,) = plan_inputs(root, tmp_path / "db", pin_entities={"image": {"task": "walking"}})
    assert (
        rec.kind is None
        and "no candidate has the entities {'task': 'walking'} of setting ingest.pin_entities.image"
        in rec.reason
    )


def _head(shape=(64, 64, 24), seed=0, ghost=0.0):
    """A magnitude 'head': an ellipsoid with texture in Rayleigh noise; ``ghost`` adds
    motion ghosts (shifted copies of the head along the phase-encoding axis)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[::-1]], indexing="ij")
    inside = (x.T**2 / 0.4 + y.T**2 / 0.5 + z.T**2 / 0.8) < 1
    head = np.where(inside, 800.0 + 100 * rng.standard_normal(shape), 0.0)
    img = head + rng.rayleigh(15.0, shape)
    for k, shift in ((1, shape[1] // 2), (2, shape[1] // 4)):
        img += ghost / k * np.roll(head, shift, axis=1)
    return img.astype(np.float32)


def _save(path, data, zooms=(0.9, 0.9, 2.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    img.header.set_qform(img.affine, 1)
    img.header.set_sform(img.affine, 1)
    nib.save(img, path)


def test_the_least_ghosted_repeat_is_ingested_and_the_figures_are_reported(tmp_path):
    """run-1 clean, run-2 with motion ghosting: the plan's provisional choice (the
    latest run) is overruled by the ghosting index at ingestion."""
    root = _dataset(tmp_path, [], {})
    _save(root / "sub-01/anat/sub-01_run-1_T2starw.nii.gz", _head(seed=1))
    _save(root / "sub-01/anat/sub-01_run-2_T2starw.nii.gz", _head(seed=2, ghost=0.25))
    (rec,) = plan_inputs(root, tmp_path / "db")
    assert rec.magnitude[0].endswith("run-2_T2starw.nii.gz")  # provisional: the latest run
    report = ingest_subject(
        rec, tmp_path / "o" / "m.nii.gz", out_json=tmp_path / "o" / "r.json", min_fov_mm=None
    )
    assert report["inputs"]["magnitude"][0]["path"].endswith("run-1_T2starw.nii.gz")
    quality = {q["path"].rsplit("_", 2)[-2]: q for q in report["candidates_quality"]}
    assert quality["run-1"]["chosen"] and not quality["run-2"]["chosen"]
    assert quality["run-2"]["ghosting_index"] > 2 * quality["run-1"]["ghosting_index"]
    assert "by image quality among 2 candidates" in report["reason"]
    np.testing.assert_allclose(
        nib.load(tmp_path / "o" / "m.nii.gz").get_fdata(),
        nib.load(root / "sub-01/anat/sub-01_run-1_T2starw.nii.gz").get_fdata(),
        rtol=1e-6,
    )


def test_quality_choice_through_the_cli(tmp_path):
    root = _dataset(tmp_path, [], {})
    _save(root / "sub-01/anat/sub-01_acq-a_T2starw.nii.gz", _head(seed=3, ghost=0.3))
    _save(root / "sub-01/anat/sub-01_acq-b_T2starw.nii.gz", _head(seed=4))
    (rec,) = plan_inputs(root, tmp_path / "db")
    argv = [
        "run",
        "--subject",
        "01",
        "--kind",
        rec.kind,
        "--mag",
        *rec.magnitude,
        "--reason",
        rec.reason,
        "--alternatives",
        json.dumps(rec.alternatives),
        "--min-fov-mm",
        "0",
        "--out-mag",
        str(tmp_path / "m.nii.gz"),
        "--out-json",
        str(tmp_path / "r.json"),
    ]
    assert main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["inputs"]["magnitude"][0]["path"].endswith("acq-b_T2starw.nii.gz")


def test_equal_quality_keeps_the_provisional_choice(tmp_path):
    root = _dataset(tmp_path, [], {})
    for run in (1, 2):
        _save(root / f"sub-01/anat/sub-01_run-{run}_T2starw.nii.gz", _head(seed=10 + run))
    (rec,) = plan_inputs(root, tmp_path / "db")
    report = ingest_subject(rec, tmp_path / "m.nii.gz", min_fov_mm=None)
    assert report["inputs"]["magnitude"][0]["path"].endswith("run-2_T2starw.nii.gz")
    assert "the provisional choice is kept within 10%" in report["reason"]


def test_an_unreadable_repeat_is_passed_over_with_its_reason(tmp_path):
    root = _dataset(tmp_path, [], {})
    _save(root / "sub-01/anat/sub-01_run-1_T2starw.nii.gz", _head(seed=5))
    broken = root / "sub-01/anat/sub-01_run-2_T2starw.nii.gz"
    broken.write_bytes(b"\0" * 2000)
    (rec,) = plan_inputs(root, tmp_path / "db")
    report = ingest_subject(rec, tmp_path / "m.nii.gz", min_fov_mm=None)
    assert report["inputs"]["magnitude"][0]["path"].endswith("run-1_T2starw.nii.gz")
    assert f"passed over: {broken}: cannot read NIfTI header" in report["reason"]


def test_ds004332_thick_slices_refusal_names_the_setting(tmp_path):
    root, names, _ = _ds004332_t2starw(tmp_path)
    path = root / "sub-01/anat" / f"{names[3]}.nii"
    _save(
        path, _head(seed=6, shape=(64, 64, 12)), zooms=(0.9, 0.9, 6.0)
    )  # 5 mm slices at 6 mm spacing
    (rec,) = plan_inputs(
        root, tmp_path / "db", pin_entities={"image": {"task": "still", "acq": "t2starPMCon"}}
    )
    with pytest.raises(InputDataError, match=r"larger than 5 mm; .*raise ingest.max_voxel_mm"):
        ingest_subject(rec, tmp_path / "m.nii.gz")
    report = ingest_subject(rec, tmp_path / "m.nii.gz", max_voxel_mm=6.5, min_fov_mm=None)
    assert report["voxel_size_mm"] == [0.9, 0.9, 6.0]


# --------------------------------------------------------------------------- 4D GRE


def test_4d_multi_echo_gre_is_planned_as_megre_and_split(tmp_path):
    """A 4D _GRE (dcm2niix merging echoes) is a multi-echo input known at planning."""
    root = _dataset(
        tmp_path,
        [],
        {
            "sub-01/anat/sub-01_part-mag_GRE.json": {"EchoTime": [0.01, 0.02, 0.03]},
            "sub-01/anat/sub-01_part-phase_GRE.json": {"EchoTime": [0.01, 0.02, 0.03]},
        },
    )
    mag = np.stack([_head(seed=7) * np.exp(-k / 3) for k in range(3)], axis=-1)
    rng = np.random.default_rng(0)
    phase = rng.uniform(-np.pi, np.pi, mag.shape).astype(np.float32)
    _save(root / "sub-01/anat/sub-01_part-mag_GRE.nii.gz", mag)
    _save(root / "sub-01/anat/sub-01_part-phase_GRE.nii.gz", phase)
    (rec,) = plan_inputs(root, tmp_path / "db")
    assert rec.kind == "megre" and rec.echo_times == (0.01, 0.02, 0.03)
    assert "holds 3 echoes (4D)" in rec.reason
    report = ingest_subject(rec, tmp_path / "m.nii.gz", tmp_path / "p.nii.gz", min_fov_mm=None)
    assert report["n_echoes"] == 3 and report["phase_echo"] == 2
    np.testing.assert_allclose(
        nib.load(tmp_path / "m.nii.gz").get_fdata(),
        np.sqrt((mag.astype(np.float64) ** 2).mean(axis=-1)),
        rtol=1e-5,
    )


def _dataset(tmp_path, files, sidecars):
    root = tmp_path / "bids"
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()
    for rel, meta in sidecars.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(meta))
    return root
