"""Vessel evidence and the vessel rule (cmb.detect.vessel_evidence) with the shipped model.

The phantoms are rendered on a 0.25 mm grid (a tube or a ball darkening the signal
inside it) and averaged into the acquired voxels, so partial volume across thick
slices is that of a real acquisition.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from cmb.cohort_tables import build_detections, count_detections
from cmb.detect.__main__ import DEFAULT_MODEL, run_detect
from cmb.detect.inference import detect, find_candidates
from cmb.detect.model import load_model
from cmb.detect.vessel_evidence import (
    evidence_reliable,
    measure_vessel_evidence,
    tubularity,
    vessel_rule,
)
from cmb.localize import localize_candidates

FINE_MM = 0.25
SIZE_MM = 60.0


def render(objects, zooms, size_mm=SIZE_MM, noise=0.03, seed=0) -> np.ndarray:
    """Unit background darkened by ``("tube", centre, direction, radius, half_length, depth)`` and
    ``("ball", centre, radius, depth)`` objects (mm), averaged into voxels of ``zooms``, with noise."""
    n = int(size_mm / FINE_MM)
    x, y, z = (a * FINE_MM + FINE_MM / 2 for a in np.ogrid[:n, :n, :n])
    img = np.ones((n, n, n), np.float32)
    for kind, centre, *p in objects:
        rel = (x - centre[0], y - centre[1], z - centre[2])
        if kind == "tube":
            d, r, half, depth = p
            d = np.asarray(d, float) / np.linalg.norm(d)
            t = rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]
            inside = (rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2 - t * t <= r * r) & (
                np.abs(t) <= half
            )
        else:
            r, depth = p
            inside = rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2 <= r * r
        img[inside] *= 1 - depth
    f = [int(round(zm / FINE_MM)) for zm in zooms]
    m = [n // k * k for k in f]
    img = (
        img[: m[0], : m[1], : m[2]]
        .reshape(m[0] // f[0], f[0], m[1] // f[1], f[1], m[2] // f[2], f[2])
        .mean((1, 3, 5))
    )
    return (img + np.random.default_rng(seed).normal(0, noise, img.shape)).astype(np.float32)


def brain(shape, zooms, radius_mm=28.0) -> np.ndarray:
    grid = np.indices(shape)
    c = (np.asarray(shape) - 1) / 2
    return sum(((g - cc) * zm) ** 2 for g, cc, zm in zip(grid, c, zooms)) < radius_mm**2


VEIN_ALONG_B0 = ("tube", (30, 30, 30), (0, 0.1, 1), 0.6, 15, 0.8)
VEIN_IN_PLANE = ("tube", (30, 30, 30), (1, 0.3, 0), 0.6, 15, 0.8)
CMB = ("ball", (30, 30, 30), 1.6, 0.85)
VEIN_TOUCHING_CMB = (
    "tube",
    (32.2, 30, 30),
    (0, 0, 1),
    0.5,
    15,
    0.7,
)  # its wall 0.1 mm from the CMB's


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model(DEFAULT_MODEL, torch.device("cpu"))


def run(objects, zooms, model, **kw):
    img = render(objects, zooms)
    return detect(
        nib.Nifti1Image(img, np.diag([*zooms, 1.0])), brain(img.shape, zooms), None, model, **kw
    ).table


def counted(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["above_threshold"] & ~table["rejected"]]


@pytest.mark.parametrize("zooms", [(0.5, 0.5, 2.0), (1.0, 1.0, 3.0)])
@pytest.mark.parametrize("vein", [VEIN_ALONG_B0, VEIN_IN_PLANE], ids=["along_b0", "in_plane"])
def test_a_lone_vein_gives_no_detection(vein, zooms, model):
    assert counted(run([vein], zooms, model)).empty


def test_the_vessel_rule_is_what_removes_a_vein_along_b0(model):
    """On 3 mm slices the network alone takes this vein for CMBs (the independent cohort's failure)."""
    with_rule = run([VEIN_ALONG_B0], (1.0, 1.0, 3.0), model)
    without = run([VEIN_ALONG_B0], (1.0, 1.0, 3.0), model, vessel_rule_enabled=False)
    assert len(counted(without)) >= 1
    rejected = with_rule[with_rule["above_threshold"] & with_rule["rejected"]]
    assert len(rejected) == len(counted(without))
    assert set(rejected["rejected_reason"]) == {"vessel"}
    assert (rejected["vessel_length_mm"] > 15).all() and (rejected["vessel_elongation"] > 5).all()
    assert (rejected["vessel_angle_b0_deg"] < 20).all()


@pytest.mark.parametrize("zooms", [(0.5, 0.5, 2.0), (1.0, 1.0, 3.0)])
def test_a_cmb_against_a_vein_is_detected(zooms, model):
    table = run([VEIN_TOUCHING_CMB, CMB], zooms, model)
    hits = counted(table)
    centre_vox = np.array(CMB[1]) / np.array(zooms)
    assert len(hits) >= 1
    assert (
        np.linalg.norm((hits[["i", "j", "k"]].to_numpy() - centre_vox) * zooms, axis=1).min() < 2.0
    )
    best = hits.iloc[0]
    assert (
        best["vessel_length_mm"] > 15 and best["vessel_bulge"] > 2.5
    )  # on the vein, and a bulge of it


@pytest.mark.parametrize("zooms", [(0.5, 0.5, 2.0), (1.0, 1.0, 3.0)])
def test_a_lone_cmb_is_detected_and_not_a_vessel(zooms, model):
    table = run([("ball", (30, 30, 30), 1.8, 0.85)], zooms, model)
    assert not table["rejected"].any()
    assert len(counted(table)) == 1


def test_a_blooming_cmb_over_two_thick_slices_is_not_a_vessel():
    """On 5 mm slices a CMB covers two slices: elongated along z, but too few slices for a vein."""
    zooms = (1.0, 1.0, 5.0)
    img = render([("ball", (30, 30, 30), 2.2, 0.85)], zooms)
    cands = find_candidates(img, brain(img.shape, zooms), zooms)
    evidence = measure_vessel_evidence(
        img,
        brain(img.shape, zooms),
        zooms,
        np.diag([*zooms, 1.0]),
        cands.table.head(1),
        cands.labels,
    )
    assert evidence["vessel_slices"].iloc[0] <= 3
    assert not vessel_rule(evidence, zooms).any()


def test_thick_slices_are_flagged_unreliable():
    assert evidence_reliable((0.5, 0.5, 2.0)) and evidence_reliable((1.0, 1.0, 4.0))
    assert not evidence_reliable((1.0, 1.0, 5.0))


@pytest.mark.parametrize(
    "direction", [(0, 0, 1), (0.3, 0, 1), (1, 0, 2)], ids=["along_b0", "17deg", "27deg"]
)
@pytest.mark.parametrize("radius", [0.5, 1.0])
def test_tubularity_in_mm_agrees_across_grids(direction, radius):
    """The same through-plane tube (the veins that mimic CMBs), acquired at 0.5 mm isotropic and at
    0.5x0.5x2 mm: within 0.1 (measured: up to 0.07). Veins at 45 degrees and in-plane lose tubularity
    on 2 mm slices (0.4-0.65 against 0.85, docs/detection.md): the vessel rule does not rest on it."""
    centre = np.array([20.25, 20.25, 21.0])
    tube = [("tube", tuple(centre), direction, radius, 15, 0.8)]
    values = []
    for zooms in ((0.5, 0.5, 0.5), (0.5, 0.5, 2.0)):
        img = render(tube, zooms, size_mm=40.0, noise=0.0)
        values.append(tubularity(img, zooms, centre / np.array(zooms) - 0.5))
    assert values[0] > 0.75
    assert abs(values[0] - values[1]) < 0.1


def test_tubularity_separates_a_tube_from_a_ball_on_isotropic_voxels():
    zooms = (0.5, 0.5, 0.5)
    tube = render(
        [("tube", (20, 20, 20), (1, 1, 0), 0.75, 15, 0.8)], zooms, size_mm=40.0, noise=0.0
    )
    ball = render([("ball", (20, 20, 20), 2.0, 0.8)], zooms, size_mm=40.0, noise=0.0)
    centre = np.array([40, 40, 40]) - 0.5
    assert tubularity(tube, zooms, centre) > 0.6 > 0.3 > tubularity(ball, zooms, centre)


def test_angle_to_b0_follows_the_affine():
    """A vein along the voxel k axis is along B0 on an axial grid, and across it when k is stored as x (LAS, oblique)."""
    zooms = (1.0, 1.0, 1.0)
    img = render([("tube", (20, 20, 20), (0, 0, 1), 0.7, 12, 0.8)], zooms, size_mm=40.0)
    mask = np.ones(img.shape, bool)
    table = pd.DataFrame({"i": [20], "j": [20], "k": [20], "radius_mm": [1.0]})
    labels = np.zeros(img.shape, np.int32)
    labels[20, 20, 19:22] = 1
    axial = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS storage
    k_as_x = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 0, 1.0]])
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    tilted = np.array(
        [[1.0, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1.0]]
    )  # 30 degrees about x
    angles = [
        measure_vessel_evidence(img, mask, zooms, aff, table, labels)["vessel_angle_b0_deg"].iloc[0]
        for aff in (axial, k_as_x, tilted)
    ]
    assert angles[0] < 5 and angles[1] > 85 and abs(angles[2] - 30) < 5


def test_the_rule_needs_more_slices_on_thick_slices():
    evidence = pd.DataFrame(
        {
            "vessel_length_mm": [12.0],
            "vessel_width_mm": [2.0],
            "vessel_elongation": [6.0],
            "vessel_angle_b0_deg": [3.0],
            "vessel_slices": [3.0],
            "vessel_bulge": [1.0],
            "vessel_darkening": [1.1],
            "tubularity": [0.5],
        }
    )
    assert vessel_rule(evidence, (1.0, 1.0, 3.0))[0]
    assert not vessel_rule(evidence, (1.0, 1.0, 5.0))[0]
    assert not vessel_rule(evidence, (1.0, 1.0, 3.0), {"enabled": False})[0]
    assert not vessel_rule(evidence.assign(vessel_bulge=4.0), (1.0, 1.0, 3.0))[0]  # a CMB on a vein
    assert not vessel_rule(evidence.assign(vessel_darkening=2.2), (1.0, 1.0, 3.0))[
        0
    ]  # blooming, darkest at its centre


def test_int16_scaled_input_writes_the_vessel_reason_and_sidecar(tmp_path):
    """Through the CLI function: an int16 image with scl_slope, the TSV's reason and the sidecar's rule."""
    zooms = (1.0, 1.0, 3.0)
    img = render([VEIN_ALONG_B0], zooms)
    stored = nib.Nifti1Image(np.round(img * 1000).astype(np.int16), np.diag([*zooms, 1.0]))
    stored.header.set_slope_inter(0.001, 0.0)
    nib.save(stored, tmp_path / "image.nii.gz")
    nib.save(
        nib.Nifti1Image(brain(img.shape, zooms).astype(np.uint8), np.diag([*zooms, 1.0])),
        tmp_path / "mask.nii.gz",
    )
    out = {
        k: str(tmp_path / f"{k}{ext}")
        for k, ext in (
            ("table", ".tsv"),
            ("sidecar", ".json"),
            ("dseg", ".nii.gz"),
            ("prob", ".nii.gz"),
        )
    }
    run_detect(
        str(tmp_path / "image.nii.gz"),
        str(tmp_path / "mask.nii.gz"),
        out["table"],
        out["sidecar"],
        out["dseg"],
        out["prob"],
        use_gpu=False,
    )
    table = pd.read_csv(out["table"], sep="\t")
    vein = table[table["rejected_reason"] == "vessel"]
    assert len(vein) >= 1 and vein["vessel_length_mm"].notna().all()
    side = json.loads(open(out["sidecar"]).read())
    assert side["vessel_evidence_reliable"] is True and side["n_rejected_vessel"] == len(vein)
    assert side["vessel_rule"]["enabled"] is True


def test_the_vessel_reason_survives_localization_and_reaches_the_cohort_table():
    cand = pd.DataFrame(
        {
            "candidate_id": [1, 2],
            "i": [1, 3],
            "j": [1, 1],
            "k": [1, 1],
            "rejected": [True, False],
            "rejected_reason": ["vessel", "n/a"],
        }
    )
    mars = np.full((6, 6, 6), 1, np.int16)
    out = localize_candidates(cand, None, mars)
    assert out["rejected_reason"].tolist() == ["vessel", "n/a"]
    assert out["mars_region"].tolist() == [
        "frontal",
        "frontal",
    ]  # a rejected vein keeps its anatomy
    det = pd.DataFrame(
        {
            "participant_id": ["sub-01"] * 2,
            "session_id": ["n/a"] * 2,
            "cmb_id": ["1", "2"],
            "above_threshold": ["true", "true"],
            "rejected": ["true", "false"],
            "rejected_reason": ["vessel", "n/a"],
            "is_cmb": ["false", "true"],
            "vessel_length_mm": ["22.0", "3.0"],
            "vessel_elongation": ["11.0", "1.3"],
            "mars_category": ["lobar"] * 2,
            "mars_region": ["frontal"] * 2,
            "hemisphere": ["L"] * 2,
        }
    )
    cohort = build_detections([det])
    assert (
        cohort.loc[0, "rejected_reason"] == "vessel" and cohort.loc[0, "vessel_length_mm"] == "22.0"
    )
    counts = count_detections(det)
    assert counts["n_rejected_vessel"] == 1 and counts["n_cmb"] == 1
