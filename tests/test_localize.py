"""cmb.localize: majority vote, anatomical filter, grids, table format; and, on a real
``cmb synth`` cohort run through registration, localization against the ground truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cmb.localize import (
    format_detections,
    input_voxels,
    localize_candidates,
    localize_subject,
    majority_vote,
    read_detections_table,
    to_input_grid,
    write_table,
)
from cmb.parcellation import ATLAS_SOURCE
from cmb.synth.oracle_detections import subject_inputs, truth_candidates
from cmb.tables import DETECTION_COLUMNS

REPO = Path(__file__).resolve().parents[1]
FRONTAL_L, THALAMUS_R, CSF, OUTSIDE = 1, 107, 200, 0


def table(*centres):
    return pd.DataFrame(
        {
            "candidate_id": np.arange(1, len(centres) + 1),
            "i": [c[0] for c in centres],
            "j": [c[1] for c in centres],
            "k": [c[2] for c in centres],
        }
    )


# --------------------------------------------------------------------------- vote


def test_vote_majority_wins_over_centre():
    assert majority_vote([1, 1, 1], [5, 5, 7], {1: 7}) == {1: 5}


def test_vote_tie_goes_to_centre_then_lowest():
    assert majority_vote([1, 1, 2, 2], [5, 7, 5, 7], {1: 7, 2: 9}) == {1: 7, 2: 5}


def test_vote_is_independent_of_voxel_order():
    rng = np.random.default_rng(0)
    ids, labels = rng.integers(1, 6, 500), rng.integers(0, 4, 500)
    perm = rng.permutation(500)
    assert majority_vote(ids, labels, {}) == majority_vote(ids[perm], labels[perm], {})


# --------------------------------------------------------------------------- localization and filter


def test_region_from_majority_of_voxels():
    mars = np.full((10, 10, 10), FRONTAL_L, np.int16)
    mars[5:] = THALAMUS_R
    dseg = np.zeros(mars.shape, np.int32)
    dseg[3:8, 4:6, 4:6] = 1  # 2 frontal slabs, 3 thalamus slabs; centre in frontal
    out = localize_candidates(table((4, 5, 5)), dseg, mars)
    assert out.loc[0, ["mars_category", "mars_region", "hemisphere"]].tolist() == [
        "deep",
        "thalamus",
        "R",
    ]
    assert out.loc[0, "n_voxels"] == 20 and not out.loc[0, "rejected"]


def test_parenchymal_voxels_vote_first_at_a_ventricle_wall():
    mars = np.full((10, 10, 10), CSF, np.int16)
    mars[:4] = THALAMUS_R
    dseg = np.zeros(mars.shape, np.int32)
    dseg[3:7, 4:6, 4:6] = 1  # 1 of 4 slabs in thalamus, centre in it
    out = localize_candidates(table((3, 5, 5)), dseg, mars)
    assert out.loc[0, "mars_region"] == "thalamus" and not out.loc[0, "rejected"]
    assert out.loc[0, "parenchyma_fraction"] == pytest.approx(0.25)


def test_csf_centred_candidate_is_rejected_and_kept_in_the_table():
    mars = np.full((10, 10, 10), CSF, np.int16)
    mars[:3] = FRONTAL_L
    dseg = np.zeros(mars.shape, np.int32)
    dseg[2:6, 4:6, 4:6] = 1  # centre in CSF, 1 of 4 slabs in parenchyma
    out = localize_candidates(table((4, 5, 5)), dseg, mars)
    assert out.loc[0, "rejected"] and out.loc[0, "rejected_reason"] == "csf"
    assert out.loc[0, ["mars_category", "mars_region", "hemisphere"]].tolist() == [
        "non-parenchyma",
        "csf",
        "n/a",
    ]


def test_csf_centre_with_mostly_parenchyma_is_kept():
    mars = np.full((10, 10, 10), FRONTAL_L, np.int16)
    mars[4] = CSF
    dseg = np.zeros(mars.shape, np.int32)
    dseg[2:7, 4:6, 4:6] = 1
    out = localize_candidates(table((4, 5, 5)), dseg, mars)
    assert not out.loc[0, "rejected"] and out.loc[0, "mars_region"] == "frontal"


def test_filter_can_be_switched_off():
    mars = np.full((8, 8, 8), CSF, np.int16)
    brain = np.ones(mars.shape, bool)
    brain[0] = False
    out = localize_candidates(
        table((4, 4, 4), (0, 4, 4)), None, mars, brain, reject_csf=False, reject_outside_brain=False
    )
    assert not out["rejected"].any()
    assert out["mars_category"].tolist() == ["non-parenchyma", "non-parenchyma"]


def test_outside_the_brain_mask_is_rejected_even_on_parenchymal_labels():
    mars = np.full((8, 8, 8), FRONTAL_L, np.int16)
    brain = np.ones(mars.shape, bool)
    brain[0] = False
    out = localize_candidates(table((0, 4, 4), (4, 4, 4)), None, mars, brain)
    assert out["rejected_reason"].tolist() == ["outside_brain", "n/a"]


def test_csf_filter_alone():
    mars = np.full((8, 8, 8), CSF, np.int16)
    mars[:, :, 6:] = OUTSIDE
    out = localize_candidates(table((4, 4, 2), (4, 4, 7)), None, mars, reject_outside_brain=False)
    assert out["rejected_reason"].tolist() == ["csf", "n/a"]


def test_without_registration_anatomy_is_na_and_the_mask_still_filters():
    brain = np.zeros((8, 8, 8), bool)
    brain[2:6, 2:6, 2:6] = True
    out = localize_candidates(table((4, 4, 4), (0, 0, 0)), None, None, brain)
    assert out["mars_region"].tolist() == ["n/a", "outside_brain"]
    assert out["rejected"].tolist() == [False, True]


def test_empty_candidate_table():
    out = localize_candidates(table(), np.zeros((4, 4, 4), np.int32), np.zeros((4, 4, 4), np.int16))
    assert len(out) == 0 and "rejected" in out


# --------------------------------------------------------------------------- grids


def test_to_input_grid_undoes_the_ras_reorientation_exactly():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 50, (7, 9, 5)).astype(np.int32)
    aff = np.array(
        [[0, 0, -2.0, 30], [-0.5, 0, 0, 20], [0, 0.5, 0, -10], [0, 0, 0, 1]]
    )  # permuted, flipped
    ras = nib.as_closest_canonical(nib.Nifti1Image(data, aff))
    back = to_input_grid(np.asanyarray(ras.dataobj), ras.affine, aff, data.shape)
    assert np.array_equal(back, data)


def test_input_voxels_of_an_lps_grid():
    aff = np.diag([-0.5, -0.5, 2.0, 1.0])
    aff[:3, 3] = [100, 90, -60]
    ijk = np.array([[10, 20, 3], [0, 0, 0]])
    xyz = nib.affines.apply_affine(aff, ijk)
    assert input_voxels(xyz, aff).tolist() == ijk.tolist()


# --------------------------------------------------------------------------- table format


def _rows(n=3):
    rng = np.random.default_rng(2)
    return pd.DataFrame(
        {
            "participant_id": "sub-01",
            "session_id": "n/a",
            "cmb_id": np.arange(1, n + 1),
            "confidence": rng.random(n),
            "above_threshold": [True, False, True][:n],
            "rejected": False,
            "rejected_reason": "n/a",
            "is_cmb": [True, False, True][:n],
            "x_mm": [-0.001, 1.5, 2.25][:n],
            "y_mm": 0.0,
            "z_mm": 0.0,
            "i": 1,
            "j": 2,
            "k": 3,
            "mni_x": np.nan,
            "mni_y": np.nan,
            "mni_z": np.nan,
            "volume_mm3": 10.0,
            "diameter_mm": 2.0,
            "mars_category": "lobar",
            "mars_region": "frontal",
            "hemisphere": "L",
            "atlas_label": "ctx-lh-precuneus",
            "phase_sign": None,
        }
    )


def test_format_has_fixed_columns_booleans_and_na():
    text = format_detections(_rows())
    assert list(text.columns) == DETECTION_COLUMNS
    assert text.loc[0, "x_mm"] == "0.00"  # no "-0.00"
    assert text["above_threshold"].tolist() == ["true", "false", "true"]
    assert (
        text.loc[0, "mni_x"] == "n/a"
        and text.loc[0, "phase_sign"] == "n/a"
        and text.loc[0, "sphericity"] == "n/a"
    )
    assert text.loc[0, "phase_used"] == "n/a"  # a candidates table from before the column
    rows = _rows().assign(phase_used=[True, False, np.nan])  # n/a read back by pandas
    assert format_detections(rows)["phase_used"].tolist() == ["true", "false", "n/a"]


def test_written_table_is_byte_identical_and_reads_back(tmp_path):
    write_table(format_detections(_rows()), tmp_path / "a.tsv")
    write_table(format_detections(_rows()), tmp_path / "b.tsv")
    assert (tmp_path / "a.tsv").read_bytes() == (tmp_path / "b.tsv").read_bytes()
    back = read_detections_table(tmp_path / "a.tsv")
    assert (
        back.loc[0, "mni_x"] == "n/a"
        and back.loc[1, "confidence"] == format_detections(_rows()).loc[1, "confidence"]
    )


def test_placeholder_candidates_table_is_a_clear_error(tmp_path):
    (tmp_path / "c.tsv").write_bytes(b"")
    with pytest.raises(ValueError, match="placeholder of a failed detect stage"):
        localize_subject(
            participant_id="01",
            session_id=None,
            candidates=tmp_path / "c.tsv",
            candidates_dseg=None,
            prob=None,
            input_image=tmp_path / "x.nii.gz",
            brain_mask=None,
            mars=None,
            inv_affine=None,
            inv_warp=None,
            out_table=tmp_path / "t.tsv",
            out_json=tmp_path / "t.json",
        )


# --------------------------------------------------------------------------- real registration, synthetic truth


def _synth_and_register(base: Path, n: int, seed: int, n_cmb: int) -> tuple[Path, Path]:
    from cmb.cli import main as cmb_main

    bids, out = base / "bids", base / "out"
    assert (
        cmb_main(
            [
                "synth",
                "--out",
                str(bids),
                "--n-subjects",
                str(n),
                "--seed",
                str(seed),
                "--preset",
                "tiny",
                "--t1w",
                "--n-cmb",
                str(n_cmb),
            ]
        )
        == 0
    )
    targets = []
    for s in range(1, n + 1):
        sub = f"{s:02d}"
        targets += [
            str(out / f"sub-{sub}" / "anat" / f"sub-{sub}_desc-mars_dseg.nii.gz"),
            str(out / f"sub-{sub}" / "figures" / f"sub-{sub}_desc-registration_swi.svg"),
        ]
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(base),
            "--cores",
            "2",
            "--config",
            f"bids_dir={bids}",
            f"output_dir={out}",
            "--",
            *targets,
        ],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=1800,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return bids, out


@pytest.fixture(scope="session")
def registered_cohort(tmp_path_factory):
    """Two tiny synthetic subjects (15 CMBs each, T1w) through ingest, preprocess and registration."""
    base = tmp_path_factory.mktemp("registered")
    bids, out = _synth_and_register(base, 2, seed=3, n_cmb=15)
    return {"base": base, "bids": bids, "out": out, "subjects": ["01", "02"]}


@pytest.fixture(scope="session")
def localized(registered_cohort):
    """localize_subject on truth-derived candidates (plus 3 false ones) of every subject."""
    base, bids, out = registered_cohort["base"], registered_cohort["bids"], registered_cohort["out"]
    res = {}
    for sub in registered_cohort["subjects"]:
        fx = truth_candidates(bids, out, sub, base / "cand" / f"sub-{sub}")
        dest = base / "loc" / f"sub-{sub}"
        files = {
            "table": dest / f"sub-{sub}_desc-cmb_detections.tsv",
            "json": dest / f"sub-{sub}_desc-cmb_detections.json",
            "dseg": dest / f"sub-{sub}_label-CMB_dseg.nii.gz",
            "prob": dest / f"sub-{sub}_label-CMB_probseg.nii.gz",
        }
        kwargs = dict(
            participant_id=sub,
            session_id=None,
            candidates=fx["paths"]["table"],
            candidates_json=fx["paths"]["sidecar"],
            candidates_dseg=fx["paths"]["dseg"],
            prob=fx["paths"]["prob"],
            config_sha256="f" * 64,
            **subject_inputs(out, sub),
        )
        text = localize_subject(
            **kwargs,
            out_table=files["table"],
            out_json=files["json"],
            out_dseg=files["dseg"],
            out_prob=files["prob"],
        )
        res[sub] = {"fx": fx, "text": text, "files": files, "kwargs": kwargs}
    return res


def _agreement(rows) -> dict:
    """Fractions of (row, truth) pairs with the true category, region and hemisphere."""
    n = len(rows)
    return {
        "n": n,
        **{
            k: sum(getattr(r, k) == getattr(t, k) for r, t in rows) / max(n, 1)
            for k in ("mars_category", "mars_region", "hemisphere")
        },
    }


@pytest.fixture(scope="module")
def true_geometry(tmp_path_factory):
    """Three tiny synthetic subjects (20 CMBs each) localized with the simulator's own transform."""
    from cmb.cli import main as cmb_main

    base = tmp_path_factory.mktemp("truegeom")
    bids = base / "bids"
    assert (
        cmb_main(
            [
                "synth",
                "--out",
                str(bids),
                "--n-subjects",
                "3",
                "--seed",
                "11",
                "--preset",
                "tiny",
                "--n-cmb",
                "20",
            ]
        )
        == 0
    )
    out = {}
    for sub in ("01", "02", "03"):
        fx = truth_candidates(bids, None, sub, base / f"sub-{sub}", truth_grid=True)
        out[sub] = (
            fx,
            localize_candidates(fx["table"], fx["dseg"], fx["mars"], fx["mask"]).set_index(
                "candidate_id"
            ),
        )
    return out


def test_localization_matches_the_truth_given_the_true_transform(true_geometry):
    # Voting and labels alone (the registration replaced by the simulator's transform):
    # measured 100% category, 96.3% region, 98.1% hemisphere on these 54 visible CMBs (MARS map v2).
    rows = [
        (loc.loc[cid], t) for fx, loc in true_geometry.values() for cid, t in fx["truth"].items()
    ]
    acc = _agreement(rows)
    assert acc["n"] == 54, acc  # of the 60 placed, six are too faint to see (not in the truth)
    assert (
        acc["mars_category"] >= 0.95 and acc["mars_region"] >= 0.9 and acc["hemisphere"] >= 0.95
    ), acc


def test_false_candidates_are_rejected_given_the_true_transform(true_geometry):
    for fx, loc in true_geometry.values():
        for cid, kind in fx["false"].items():
            assert loc.loc[cid, "rejected_reason"] == (kind if kind != "below_threshold" else "n/a")
        assert not loc.loc[list(fx["truth"]), "rejected"].any()


@pytest.mark.slow
def test_localization_after_real_registration(localized):
    # End to end, through the workflow's registration (median MNI error ~1.8 mm on the tiny
    # preset). bench/bench_localize.py measured 97.5% category, 95.4% region, 100% hemisphere
    # on 239 CMBs; on these 27 visible ones (MARS map v2) it measured 100% / 92.6% / 100%.
    rows = [
        (r["text"].set_index("cmb_id").loc[str(cid)], t)
        for r in localized.values()
        for cid, t in r["fx"]["truth"].items()
    ]
    acc = _agreement(rows)
    assert acc["n"] == 27, acc  # of the 30 placed, three are too faint to see (not in the truth)
    assert (
        acc["mars_category"] >= 0.9 and acc["mars_region"] >= 0.85 and acc["hemisphere"] >= 0.95
    ), acc


@pytest.mark.slow
def test_false_candidates_rejected_with_reason_and_kept(localized):
    for r in localized.values():
        text = r["text"].set_index("cmb_id")
        for cid, kind in r["fx"]["false"].items():
            row = text.loc[str(cid)]
            if kind == "below_threshold":
                assert (
                    row["above_threshold"] == "false"
                    and row["is_cmb"] == "false"
                    and row["rejected"] == "false"
                )
            else:
                assert (
                    row["rejected"] == "true"
                    and row["rejected_reason"] == kind
                    and row["is_cmb"] == "false"
                )
        truth_ids = [str(c) for c in r["fx"]["truth"]]
        assert (text.loc[truth_ids, "rejected"] == "false").all()


@pytest.mark.slow
def test_input_voxels_and_coordinates_match_the_truth(localized):
    for r in localized.values():
        text = r["text"].set_index("cmb_id")
        for cid, t in r["fx"]["truth"].items():
            row = text.loc[str(cid)]
            assert [int(row["i"]), int(row["j"]), int(row["k"])] == [t.i, t.j, t.k]
            mni = np.array([float(row["mni_x"]), float(row["mni_y"]), float(row["mni_z"])])
            assert (
                np.linalg.norm(mni - [t.mni_x, t.mni_y, t.mni_z]) < 8.0
            )  # registration error, tiny preset


@pytest.mark.slow
def test_label_map_on_the_input_grid_holds_the_counted_cmbs(localized):
    for r in localized.values():
        truth_img = r["fx"]["truth_image"]
        dseg = nib.load(r["files"]["dseg"])
        assert dseg.shape == truth_img.shape and np.allclose(
            dseg.affine, truth_img.affine, atol=1e-4
        )
        counted = set(r["text"].loc[r["text"]["is_cmb"] == "true", "cmb_id"].astype(int))
        assert set(np.unique(np.asanyarray(dseg.dataobj)).tolist()) - {0} <= counted
        prob = nib.load(r["files"]["prob"])
        assert prob.shape == truth_img.shape and np.asanyarray(prob.dataobj).max() > 0.5
        labels = (
            r["files"]["dseg"]
            .with_name(r["files"]["dseg"].name.replace(".nii.gz", ".tsv"))
            .read_text()
        )
        assert labels.splitlines()[0] == "index\tname"


@pytest.mark.slow
def test_sidecar_provenance(localized):
    meta = json.loads(next(iter(localized.values()))["files"]["json"].read_text())
    prov = meta["Provenance"]
    assert (
        prov["cmb_version"]
        and prov["config_sha256"] == "f" * 64
        and prov["model_sha256"] == "0" * 64
    )
    assert set(prov["software"]) >= {"ants", "torch", "snakemake"} and prov["software"]["ants"]
    assert len(prov["git"]["commit"] or "") == 40
    assert prov["inputs"]["magnitude"][0]["sha256"] and all(
        len(v) == 64 for v in prov["derived_inputs"].values()
    )
    assert meta["Summary"]["anatomy_available"] and meta["Summary"]["brain_mask_volume_ml"] > 500
    assert set(meta["Columns"]) == set(DETECTION_COLUMNS)


@pytest.mark.slow
def test_rerun_is_byte_identical(localized, tmp_path):
    r = next(iter(localized.values()))
    localize_subject(**r["kwargs"], out_table=tmp_path / "t.tsv", out_json=tmp_path / "t.json")
    assert (tmp_path / "t.tsv").read_bytes() == r["files"]["table"].read_bytes()


@pytest.mark.slow
def test_failed_registration_still_gives_a_table(localized, tmp_path):
    r = next(iter(localized.values()))
    empty = tmp_path / "mars.nii.gz"
    empty.write_bytes(b"")
    record = tmp_path / "register.json"
    record.write_text(
        json.dumps({"status": "failed", "stage": "register", "message": "SyN diverged"})
    )
    kwargs = {**r["kwargs"], "mars": empty, "register_status": record}
    text = localize_subject(**kwargs, out_table=tmp_path / "t.tsv", out_json=tmp_path / "t.json")
    assert (text["mars_region"].isin(["n/a", "outside_brain"])).all() and (
        text["mni_x"] == "n/a"
    ).all()
    meta = json.loads((tmp_path / "t.json").read_text())
    assert not meta["Summary"]["anatomy_available"] and "SyN diverged" in meta["AnatomyNote"]


@pytest.mark.slow
def test_the_parcellation_source_comes_from_registrations_quality_record(localized, tmp_path):
    # registration decides which map localize reads (the MNI atlas, or the session's own parcellation):
    # its quality JSON names it, and the table's column and the sidecar follow that record
    r = next(iter(localized.values()))
    assert set(r["text"]["parcellation_source"]) == {ATLAS_SOURCE}
    record = json.loads(Path(r["kwargs"]["quality"]).read_text())
    source = "fmriprep:sub-01/anat/sub-01_desc-aparcaseg_dseg.nii.gz"
    quality = tmp_path / "quality.json"
    quality.write_text(json.dumps({**record, "parcellation_source": source}))
    text = localize_subject(
        **{**r["kwargs"], "quality": quality},
        out_table=tmp_path / "t.tsv",
        out_json=tmp_path / "t.json",
    )
    assert set(text["parcellation_source"]) == {source}
    loc = json.loads((tmp_path / "t.json").read_text())["Localization"]
    assert loc["parcellation_source"] == source and "own parcellation" in loc["atlas"]
