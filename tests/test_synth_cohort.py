"""End-to-end checks of `cmb synth` cohorts: BIDS validity, truth consistency, determinism, bad input."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from bids import BIDSLayout
from bids_validator import BIDSValidator
from scipy import ndimage as ndi

from cmb.cli import main
from cmb.mars_region import CSF_LABEL, OUTSIDE_LABEL, build_mars_map, decode_label
from cmb.synth import SynthOptions, synthesize
from cmb.template import load_mni

TRUTH = Path("derivatives/cmb-truth")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "bids"
    synthesize(
        SynthOptions(out=out, n_subjects=2, seed=11, preset="tiny", n_cmb=6, with_t1w=True),
        log=lambda m: None,
    )
    return out


def _scans(root):
    for params in sorted((root / TRUTH).rglob("*_synth.json")):
        yield params, json.loads(params.read_text())


def _truth(params_path, suffix):
    return params_path.with_name(params_path.name.replace("_synth.json", suffix))


def test_bids_layout_parses(cohort):
    # swi/*_part-*_GRE is the SWI extension proposal (BEP004), found in the wild but
    # not in the released validator's schema: parse without validation, check entities.
    layout = BIDSLayout(cohort, validate=False)
    assert layout.get_subjects() == ["01", "02"]
    mags = layout.get(subject="01", part="mag", suffix="GRE", extension=".nii.gz")
    assert len(mags) == 1 and Path(mags[0].path).parent.name == "swi"
    niftis = {Path(f).name for f in layout.get(extension=".nii.gz", return_type="file")}
    on_disk = {p.name for p in cohort.glob("sub-*/**/*.nii.gz")}
    assert niftis == on_disk and len(on_disk) == 6  # mag, phase, T1w per subject
    desc = json.loads((cohort / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] and desc["GeneratedBy"][0]["Name"] == "cmb synth"
    assert pd.read_csv(cohort / "participants.tsv", sep="\t").participant_id.tolist() == [
        "sub-01",
        "sub-02",
    ]


def test_images_have_valid_affines_matching_sidecars(cohort):
    for params_path, params in _scans(cohort):
        for rel in params["images"].values():
            img = nib.load(cohort / rel)
            side = json.loads((cohort / rel.replace(".nii.gz", ".json")).read_text())
            assert img.header["qform_code"] == 1 and img.header["sform_code"] == 1
            np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)
            assert abs(np.linalg.det(img.affine[:3, :3])) > 0
            np.testing.assert_allclose(img.header.get_zooms()[:3], params["voxel_mm"], atol=1e-4)
            assert side["SliceThickness"] == pytest.approx(img.header.get_zooms()[2])
            assert side["MagneticFieldStrength"] == params["field_strength"]
            assert side["EchoTime"] == pytest.approx(params["echo_times"][0])
            assert img.shape == tuple(params["matrix"])
            assert np.isfinite(img.get_fdata()).all()


def test_cmb_truth_is_self_consistent(cohort):
    for params_path, params in _scans(cohort):
        table = pd.read_csv(_truth(params_path, "_label-CMB_dseg.tsv"), sep="\t")
        dseg = nib.load(_truth(params_path, "_label-CMB_dseg.nii.gz"))
        labels = np.asarray(dseg.dataobj)
        subvisible = (
            pd.read_csv(_truth(params_path, "_mimics.tsv"), sep="\t")
            .type.eq("cmb_subvisible")
            .sum()
        )
        assert len(table) + subvisible == 6 and set(np.unique(labels)) == {0, *table["index"]}
        for r in table.itertuples():
            xyz = dseg.affine @ [r.i, r.j, r.k, 1]
            assert np.linalg.norm(xyz[:3] - [r.x_mm, r.y_mm, r.z_mm]) < np.linalg.norm(
                dseg.header.get_zooms()
            )
            assert labels[r.i, r.j, r.k] == r.index


def test_cmb_centres_darker_than_surrounding_tissue(cohort):
    ratios = []
    for params_path, params in _scans(cohort):
        mag = nib.load(cohort / params["images"]["mag"]).get_fdata()
        labels = np.asarray(nib.load(_truth(params_path, "_label-CMB_dseg.nii.gz")).dataobj)
        for r in pd.read_csv(_truth(params_path, "_label-CMB_dseg.tsv"), sep="\t").itertuples():
            lesion = labels == r.index
            shell = (
                ndi.binary_dilation(lesion, iterations=3)
                & ~ndi.binary_dilation(lesion)
                & (labels == 0)
            )
            ratios.append(mag[lesion].min() / np.median(mag[shell]))
    assert np.mean(np.array(ratios) < 0.85) >= 0.9 and np.median(ratios) < 0.6


def _mars_value(mars, r) -> int:
    """The MARS label at a truth row's MNI centre."""
    inv = np.linalg.inv(mars.affine)
    return mars.labels[
        tuple(np.round(inv[:3, :3] @ [r.mni_x, r.mni_y, r.mni_z] + inv[:3, 3]).astype(int))
    ]


def test_cmbs_in_parenchyma_with_mars_label_of_the_atlas(cohort):
    mars = build_mars_map(load_mni(1))
    for params_path, params in _scans(cohort):
        brain = np.asarray(nib.load(_truth(params_path, "_desc-brain_mask.nii.gz")).dataobj)
        for r in pd.read_csv(_truth(params_path, "_label-CMB_dseg.tsv"), sep="\t").itertuples():
            value = _mars_value(mars, r)
            assert value not in (CSF_LABEL, OUTSIDE_LABEL)
            assert decode_label(value) == (r.mars_category, r.mars_region, r.hemisphere)
            assert brain[r.i, r.j, r.k] == 1


def test_truth_labels_come_from_the_1mm_mars_map_for_a_2mm_head_model(tmp_path):
    # The tiny preset's head model is 2 mm; its truth must still match the 1 mm map the
    # workflow uses by default. Of these 50 CMBs, 45 are visible (MARS map version 2), and some sit
    # where the two maps disagree.
    synthesize(
        SynthOptions(out=tmp_path, n_subjects=2, seed=11, preset="tiny", n_cmb=25),
        log=lambda m: None,
    )
    mars = build_mars_map(load_mni(1))
    rows = [
        r
        for p, _ in _scans(tmp_path)
        for r in pd.read_csv(_truth(p, "_label-CMB_dseg.tsv"), sep="\t").itertuples()
    ]
    assert len(rows) == 45
    for r in rows:
        assert decode_label(_mars_value(mars, r)) == (r.mars_category, r.mars_region, r.hemisphere)


def test_truth_transform_maps_scanner_to_mni(cohort):
    for params_path, _ in _scans(cohort):
        xfm = nib.load(
            next(
                params_path.parent.glob(
                    params_path.name.split("_synth")[0] + "_from-scanner*_xfm.nii.gz"
                )
            )
        )
        coords = xfm.get_fdata()
        inv = np.linalg.inv(xfm.affine)
        for r in pd.read_csv(_truth(params_path, "_label-CMB_dseg.tsv"), sep="\t").itertuples():
            ijk = inv[:3, :3] @ [r.x_mm, r.y_mm, r.z_mm] + inv[:3, 3]
            mni = [ndi.map_coordinates(coords[..., a], ijk[:, None], order=1)[0] for a in range(3)]
            assert np.linalg.norm(np.array(mni) - [r.mni_x, r.mni_y, r.mni_z]) < 1.0


def test_mimics_table_lists_veins_and_air(cohort):
    for params_path, _ in _scans(cohort):
        mimics = pd.read_csv(_truth(params_path, "_mimics.tsv"), sep="\t")
        veins = mimics[mimics.type.str.startswith("vein")]
        assert len(veins) >= 10 and (veins.length_mm > 3).all()
        assert mimics.type.str.startswith("air").sum() == 4
        assert veins.through_plane.any() and (~veins.through_plane).any()


@pytest.mark.parametrize(
    "layout, te, expected",
    [
        ("T2starw", None, ["anat/sub-01_T2starw.nii.gz"]),
        ("swi-swi", None, ["swi/sub-01_swi.nii.gz"]),
        ("swi-anat", None, ["anat/sub-01_swi.nii.gz"]),
        (
            "MEGRE",
            (5.0, 12.0, 20.0),
            [
                f"anat/sub-01_echo-{e}_part-{p}_MEGRE.nii.gz"
                for e in (1, 2, 3)
                for p in ("mag", "phase")
            ],
        ),
    ],
)
def test_naming_variants(tmp_path, layout, te, expected):
    synthesize(
        SynthOptions(
            out=tmp_path,
            n_subjects=1,
            seed=3,
            preset="tiny",
            layout=layout,
            te_ms=te,
            n_cmb=1,
            n_veins=2,
        ),
        log=lambda m: None,
    )
    written = sorted(
        str(p.relative_to(tmp_path / "sub-01")) for p in tmp_path.glob("sub-01/*/*.nii.gz")
    )
    assert written == sorted(expected)
    if expected[0].startswith("anat/") and layout != "swi-anat":  # in the released BIDS schema
        assert all(BIDSValidator().is_bids(f"/sub-01/{e}") for e in expected)
    if layout == "MEGRE":
        tes = [
            json.loads((tmp_path / "sub-01" / e.replace(".nii.gz", ".json")).read_text())[
                "EchoTime"
            ]
            for e in expected[::2]
        ]
        assert tes == [0.005, 0.012, 0.02]


def test_same_seed_same_voxels_other_seed_differs(tmp_path):
    def run(name, seed):
        synthesize(
            SynthOptions(
                out=tmp_path / name, n_subjects=1, seed=seed, preset="tiny", n_cmb=2, n_veins=3
            ),
            log=lambda m: None,
        )
        mag = nib.load(tmp_path / name / "sub-01/swi/sub-01_part-mag_GRE.nii.gz").get_fdata()
        table = (tmp_path / name / TRUTH / "sub-01/swi/sub-01_label-CMB_dseg.tsv").read_text()
        return mag, table

    a, ta = run("a", 5)
    b, tb = run("b", 5)
    c, _ = run("c", 6)
    assert np.array_equal(a, b) and ta == tb
    assert not np.array_equal(a, c)


def test_preview_figure(tmp_path):
    synthesize(
        SynthOptions(
            out=tmp_path, n_subjects=1, seed=2, preset="tiny", n_cmb=3, n_veins=3, preview=True
        ),
        log=lambda m: None,
    )
    png = tmp_path / TRUTH / "preview.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n-subjects", "0"], "--n-subjects must be a positive integer"),
        (["--n-subjects", "1", "--preset", "7t-magic"], "unknown preset '7t-magic'"),
        (["--n-subjects", "1", "--te", "-5"], "impossible physics: echo times"),
        (["--n-subjects", "1", "--snr", "0"], "impossible physics: --snr"),
        (["--n-subjects", "1", "--field-strength", "50"], "impossible physics: --field-strength"),
        (["--n-subjects", "1", "--slice-thickness", "40"], "impossible physics: --slice-thickness"),
        (["--n-subjects", "1", "--location-prior", "lobar=-1,deep=1"], "weights must be >= 0"),
        (
            ["--n-subjects", "1", "--location-prior", "frontal=1"],
            "unknown location prior 'frontal=1'",
        ),
    ],
)
def test_bad_requests_fail_cleanly_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["synth", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_non_empty_out_needs_overwrite(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user data")
    assert main(["synth", "--out", str(tmp_path), "--n-subjects", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_location_prior_shifts_cmbs(tmp_path):
    def categories(prior, name):
        synthesize(
            SynthOptions(
                out=tmp_path / name,
                n_subjects=2,
                seed=8,
                preset="tiny",
                n_cmb=12,
                n_veins=0,
                location_prior=prior,
            ),
            log=lambda m: None,
        )
        tables = [
            pd.read_csv(p, sep="\t")
            for p in (tmp_path / name / TRUTH).rglob("*_label-CMB_dseg.tsv")
        ]
        return pd.concat(tables).mars_category.value_counts(normalize=True)

    caa, deep = categories("caa", "caa"), categories("lobar=0,deep=1,infratentorial=0", "deep")
    assert caa.get("lobar", 0) > 0.7 and set(deep.index) == {"deep"}
