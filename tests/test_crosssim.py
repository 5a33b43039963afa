"""The cross-simulator (cmb crosssim): analytic fields, sources, forward model, cohort and CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cmb.annotations import acquisition_label, truth_files
from cmb.crosssim.cohort import CrossSimOptions, generate
from cmb.crosssim.fields import cylinder_field, rad_per_ppm, sphere_field, sphere_field_gradient
from cmb.crosssim.forward import Contrast, draw_acquisition, simulate_scan
from cmb.crosssim.geometry import CLASSES, JUXTACORTICAL_MM, PARENCHYMA, random_head
from cmb.crosssim.sources import place_calcifications, place_microbleeds, place_veins
from cmb.evaluation import load_truth

TRUTH = Path("derivatives") / "cmb-truth"


# --------------------------------------------------------------------------- fields
def test_sphere_field_matches_the_dipole_formula():
    a, chi = 1.2, 1.5
    rng = np.random.default_rng(0)
    d = rng.normal(size=(50, 3))
    d *= rng.uniform(1.3, 8.0, (50, 1)) / np.linalg.norm(d, axis=1, keepdims=True)
    r = np.linalg.norm(d, axis=1)
    cos_t = d[:, 2] / r
    expected = chi / 3 * (a / r) ** 3 * (3 * cos_t**2 - 1)
    np.testing.assert_allclose(sphere_field(d, a, chi), expected, rtol=1e-12)
    assert np.all(
        sphere_field(d * 0.1 * a / r[:, None], a, chi) == 0
    )  # Lorentz-corrected: no shift inside


def test_sphere_gradient_matches_finite_differences():
    d = np.array([[2.0, 1.0, 1.5], [-1.0, 2.5, -2.0], [0.3, -0.2, 3.0]])
    g = sphere_field_gradient(d, 1.0, 0.8)
    h = 1e-5
    for axis in range(3):
        step = np.zeros(3)
        step[axis] = h
        fd = (sphere_field(d + step, 1.0, 0.8) - sphere_field(d - step, 1.0, 0.8)) / (2 * h)
        np.testing.assert_allclose(g[:, axis], fd, rtol=1e-6, atol=1e-12)


def test_vein_along_b0_has_no_field_outside_and_chi_over_3_inside():
    p = np.array([[1.0, 0.0, 0.0], [0.0, -2.0, 3.0], [0.7, 0.7, -4.0], [0.1, 0.0, 0.0]])
    f = cylinder_field(p, [0, 0, -20], [0, 0, 20], 0.5, 0.45)
    np.testing.assert_allclose(f[:3], 0.0, atol=1e-15)
    assert f[3] == pytest.approx(0.45 / 3)


def test_vein_across_b0_outside_field_and_angle_dependence():
    chi, a = 0.4, 0.6
    # axis along y (perpendicular to B0): outside chi/2 (a/r)^2 cos(2 phi), phi from B0's projection (z)
    p = np.array([[0.0, 0.0, 2.0], [2.0, 0.0, 0.0], [np.sqrt(2), 0.0, np.sqrt(2)]])
    f = cylinder_field(p, [0, -30, 0], [0, 30, 0], a, chi)
    np.testing.assert_allclose(
        f, [chi / 2 * (a / 2) ** 2, -chi / 2 * (a / 2) ** 2, 0.0], atol=1e-12
    )
    # inside: chi (3 cos^2 theta - 1) / 6 for an axis at 60 degrees
    d = np.array([np.sin(np.pi / 3), 0.0, np.cos(np.pi / 3)])
    inside = cylinder_field(np.zeros((1, 3)), -30 * d, 30 * d, a, chi)
    assert inside[0] == pytest.approx(chi * (3 * 0.25 - 1) / 6)


def test_vein_cut_into_pieces_keeps_its_field_and_fades_past_a_free_end():
    chi, a = 0.4, 0.5
    start, end = np.array([0.0, -10.0, 0.0]), np.array([0.0, 10.0, 0.0])
    rng = np.random.default_rng(1)
    p = np.column_stack([rng.uniform(-3, 3, 200), rng.uniform(-8, 8, 200), rng.uniform(-3, 3, 200)])
    whole = cylinder_field(p, start, end, a, chi)
    mid = np.array([0.0, 1.5, 0.0])
    pieces = cylinder_field(p, start, mid, a, chi, True, False) + cylinder_field(
        p, mid, end, a, chi, False, True
    )
    np.testing.assert_allclose(pieces, whole, atol=1e-12)
    beyond = np.array([[1.0, 10.0 + 1.01 * a, 0.0], [0.0, -10.0 - 2 * a, 1.0]])
    assert np.all(cylinder_field(beyond, start, end, a, chi) == 0)
    assert cylinder_field(np.array([[0.0, 9.9, 1.2]]), start, end, a, chi)[0] != 0


def test_rad_per_ppm():
    assert rad_per_ppm(1.5, 0.04) == pytest.approx(2 * np.pi * 42.577478 * 1.5 * 0.04)


# --------------------------------------------------------------------------- geometry and sources
@pytest.fixture(scope="module")
def subject():
    rng = np.random.default_rng(7)
    head = random_head(rng, map_shape=(91, 181))
    veins = place_veins(head, rng, 8)
    calcs = place_calcifications(head, rng, 2)
    cmbs = place_microbleeds(head, rng, 6, veins, calcs, touching_fraction=0.5)
    return head, veins, calcs, cmbs


def test_head_has_brain_tissue_inside_skull_and_air_outside(subject):
    head = subject[0]
    centre = head.to_scanner(np.zeros((1, 3)))
    assert CLASSES[head.classify(centre)[0]] in ("white_matter", "thalamus", "ventricle")
    far = head.to_scanner(np.array([[0.0, 0.0, 200.0], [150.0, 0.0, 0.0]]))
    assert list(head.classify(far)) == [0, 0]
    # along a ray to the side: brain, then CSF, skull, scalp, air
    ray = head.to_scanner(
        np.column_stack([np.linspace(0, 120, 600), np.zeros(600), np.full(600, 20.0)])
    )
    names = [CLASSES[c] for c in head.classify(ray)]
    order = [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]]
    tail = [n for n in order if n in ("csf", "skull", "scalp", "air")][-4:]
    assert tail == ["csf", "skull", "scalp", "air"]


def test_mars_category_is_lobar_within_the_juxtacortical_distance_of_any_cortex(subject):
    """The truth's MARS category measures white matter's distance to the nearest cortex (outer
    surface, sulcal lining, medial surface), not its depth below the outer surface: white matter
    beside the medial cortex is juxtacortical (lobar) however deep it lies."""
    head = subject[0]
    rng = np.random.default_rng(3)
    lo, hi = head.icv_box()
    p = head.to_scanner(rng.uniform(lo, hi, (20_000, 3)))
    wm = p[head.classify(p) == CLASSES.index("white_matter")][:80]
    dist = np.array([head.cortex_distance(x, 12.0) for x in wm])
    category = head.mars_category(wm)
    assert list(category) == ["lobar" if d <= JUXTACORTICAL_MM else "deep" for d in dist]
    assert (category == "lobar").any() and (category == "deep").any()
    # points the old rule (15 mm below the outer surface: the placement zone) put on the wrong side
    zone = head.placement_zone(wm)
    assert (zone != category).any()
    cortex = p[head.classify(p) == CLASSES.index("cortex")][:5]
    assert set(head.mars_category(cortex)) == {"lobar"}
    assert all(head.cortex_distance(x, 1.0) <= 0.25 for x in cortex)


def test_veins_microbleeds_and_calcifications(subject):
    head, veins, calcs, cmbs = subject
    assert len(veins) == 8 and len(calcs) == 2 and 1 <= len(cmbs) <= 6
    for m in cmbs:
        assert head.classify(m.centre[None])[0] in PARENCHYMA
        assert 0.4 <= m.radius_mm <= 2.5 and 0.5 <= m.chi_ppm <= 2.0
        d = min(
            v.axis_distance(m.centre[None])[0][0] - v.axis_distance(m.centre[None])[1][0]
            for v in veins
        )
        assert m.touches_vein == (d - m.radius_mm <= 0.5)
    assert any(m.touches_vein for m in cmbs)
    for v in veins:
        rows = v.segments()
        assert all(0.3 <= r["radius_mm"] <= 0.9 for r in rows[:1])
        assert rows[0]["is_vein_end_start"] or v.kind == "branching"
        if v.kind == "along_b0":
            assert len(rows) == 1 and rows[0]["angle_to_b0_deg"] <= 20.0
            assert 10.0 <= np.linalg.norm(rows[0]["end"] - rows[0]["start"]) <= 35.0
    assert all(-1.0 <= c.chi_ppm <= -0.3 for c in calcs)


def test_forward_model_is_deterministic_and_shows_the_sources(subject):
    head, veins, calcs, cmbs = subject

    def run():
        rng = np.random.default_rng(3)
        return simulate_scan(
            head, veins, cmbs, calcs, draw_acquisition("tiny", rng), Contrast(), rng
        )

    a, b = run(), run()
    np.testing.assert_array_equal(a.magnitude, b.magnitude)
    np.testing.assert_array_equal(a.phase, b.phase)
    assert a.phase.min() >= -np.pi and a.phase.max() <= np.pi
    assert set(np.unique(a.cmb_labels)) - {0} <= {m.label for m in cmbs}
    inv = np.linalg.inv(a.affine)
    brain = np.median(a.magnitude[a.brain_mask])
    for m in cmbs:
        i, j, k = np.round(inv[:3, :3] @ m.centre + inv[:3, 3]).astype(int)
        if 0 <= k < a.magnitude.shape[2]:
            assert a.cmb_labels[i, j, k] == m.label
            if m.radius_mm > 1.0:  # a large bleed is dark in the image
                assert a.magnitude[i, j, k] < 0.6 * brain


# --------------------------------------------------------------------------- cohort and CLI
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("xs") / "bids"
    generate(
        CrossSimOptions(
            out=out, n_subjects=1, seed=5, cmb_free=1, n_cmb=4, n_veins=6, preset="tiny"
        ),
        log=lambda *_: None,
    )
    return out


def test_cohort_layout_and_sidecars(cohort):
    assert json.loads((cohort / "dataset_description.json").read_text())["DatasetType"] == "raw"
    parts = pd.read_csv(cohort / "participants.tsv", sep="\t")
    assert list(parts["participant_id"]) == ["sub-01", "sub-02"]
    for sub in ("sub-01", "sub-02"):
        mag = cohort / sub / "anat" / f"{sub}_part-mag_GRE.nii.gz"
        phase = mag.with_name(f"{sub}_part-phase_GRE.nii.gz")
        img = nib.load(mag)
        assert img.get_data_dtype() == np.uint16 and img.dataobj.slope != 1.0
        side = json.loads(mag.with_name(f"{sub}_part-mag_GRE.json").read_text())
        assert (
            side["EchoTime"] < 0.1 and side["MagneticFieldStrength"] == 3.0 and side["Manufacturer"]
        )
        pside = json.loads(phase.with_name(f"{sub}_part-phase_GRE.json").read_text())
        data = np.asanyarray(nib.load(phase).dataobj)
        if pside["Units"] == "rad":
            assert data.min() >= -np.pi - 1e-6 and data.max() <= np.pi + 1e-6
        else:
            assert data.dtype == np.int16 and data.min() >= -4096 and data.max() <= 4095


def test_truth_is_read_by_the_evaluation(cohort):
    files = truth_files(cohort / TRUTH)
    assert set(files) == {"sub-01", "sub-02"}
    truth = load_truth(files["sub-01"])
    assert 1 <= truth.n <= 4 and truth.table["has_mask"].all()
    assert {"touches_vein", "mars_category", "radius_mm"} <= set(truth.table.columns)
    assert load_truth(files["sub-02"]).n == 0
    assert acquisition_label(files["sub-01"]) == "tiny"
    folder = files["sub-01"].parent
    veins = pd.read_csv(folder / "sub-01_veins.tsv", sep="\t")
    assert {
        "vein_id",
        "segment",
        "start_x",
        "end_z",
        "radius_mm",
        "angle_to_b0_deg",
        "is_vein_end_start",
        "is_vein_end_end",
    } <= set(veins.columns)
    assert veins["vein_id"].nunique() == 6
    mimics = pd.read_csv(folder / "sub-01_mimics.tsv", sep="\t")
    assert mimics["type"].str.startswith("calcification").any()
    params = json.loads((folder / "sub-01_synth.json").read_text())
    assert params["simulator"] == "cmb crosssim" and params["seed"] == 5


def test_same_seed_same_cohort(cohort, tmp_path):
    again = tmp_path / "again"
    generate(
        CrossSimOptions(
            out=again, n_subjects=1, seed=5, cmb_free=1, n_cmb=4, n_veins=6, preset="tiny"
        ),
        log=lambda *_: None,
    )
    for f in sorted(p for p in cohort.rglob("*") if p.is_file() and p.name != "README"):
        assert f.read_bytes() == (again / f.relative_to(cohort)).read_bytes(), f


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "cmb.cli", "crosssim", *args], capture_output=True, text=True
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--n-subjects", "0"],
        ["--n-subjects", "1", "--preset", "swi-7t"],
        ["--n-subjects", "1", "--n-cmb", "-1"],
    ],
)
def test_cli_bad_request_exits_2_and_writes_nothing(tmp_path, args):
    out = tmp_path / "out"
    r = _cli("--out", str(out), *args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("cmb crosssim: error:")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    r = _cli("--out", str(tmp_path), "--n-subjects", "1", "--preset", "tiny")
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
