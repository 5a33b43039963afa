"""Domain-randomized training data of `cmb synth`: randomized veins, CMBs against veins, the randomized preset."""

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cmb.cli import main
from cmb.synth import SynthError, SynthOptions, synthesize, validate_options
from cmb.synth.anatomy import _r2s_at_field, build_head_model
from cmb.synth.cohort import cmb_size_model
from cmb.synth.geometry import acquisition_affine, distance_to_path, random_pose, random_warp
from cmb.synth.lesions import (
    LOCATION_PRIORS,
    blooming_factor,
    place_cmbs,
    place_veins,
    to_subject_space,
)
from cmb.synth.physics import Source, simulate_sources
from cmb.synth.presets import RANDOMIZED, SITES, draw_acquisition
from cmb.synth.random_veins import LENGTH_MM, RADIUS_MM, place_random_veins, place_touching_cmbs
from cmb.synth.truth import cmb_table

TRUTH = Path("derivatives/cmb-truth")
# The truth columns before the randomized veins (kept, in this order, for every mode).
OLD_CMB_COLUMNS = [
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
]
OLD_MIMIC_COLUMNS = [
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
]
# `tiny`, seed 11, 3 CMBs, without randomized veins: the label images and the old truth columns
# exactly, and moments of the rendered images. Recomputed when MARS_MAP_VERSION 2 (cmb.mars_region)
# moved where lesions are placed; the randomized veins must not move it. The rendered images are
# compared to a tolerance because their last bit depends on the CPU's vectorized maths (an image
# quantized to integers flips a few voxels by one between Intel and AMD machines); a moved vein
# or lesion changes the moments by far more than that.
DEFAULT_LABELS_SHA256 = "cd1c2a294258cdb44200b887c25acd5183fb39d7cd2d6414db035a33da41221c"
DEFAULT_IMAGE_MOMENTS = {
    "derivatives/cmb-truth/sub-01/swi/sub-01_from-scanner_to-MNI152NLin2009cAsym_mode-points_xfm.nii.gz": [
        9169238.59,
        615472401.0,
        189717442.0,
        238830268.0,
        135534010.0,
    ],
    "sub-01/swi/sub-01_part-mag_GRE.nii.gz": [
        976777027.0,
        2098100840000.0,
        61982309900.0,
        72412546800.0,
        30959238900.0,
    ],
    "sub-01/swi/sub-01_part-phase_GRE.nii.gz": [
        1994347450.0,
        5078795280000.0,
        126394746000.0,
        149126981000.0,
        56441105100.0,
    ],
}
LABEL_IMAGES = ("_desc-brain_mask", "_label-CMB_dseg")


def _image_moments(a: np.ndarray) -> list[float]:
    """Sum of absolute values, sum of squares, and the first moment of the absolute values
    along each axis (all non-negative, so that a relative tolerance means the same for each)."""
    a = np.abs(a.astype(np.float64).reshape(a.shape[:3] + (-1,)))
    grids = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in a.shape[:3]), indexing="ij")
    return [float(a.sum()), float((a * a).sum())] + [float((a * g[..., None]).sum()) for g in grids]


def _fingerprint(root: Path) -> tuple[str, dict[str, list[float]]]:
    """(SHA-256 of the label images and truth tables, moments of every other image)."""
    h = hashlib.sha256()
    moments = {}
    for p in sorted(root.rglob("*.nii.gz")):
        rel = str(p.relative_to(root))
        data = np.asarray(nib.load(p).dataobj)
        if any(tag in p.name for tag in LABEL_IMAGES):
            h.update(rel.encode())
            h.update(data.tobytes())
        else:
            moments[rel] = _image_moments(data)
    for p in sorted(root.rglob("*.tsv")):
        df = pd.read_csv(p, sep="\t")
        cols = (
            OLD_CMB_COLUMNS
            if "dseg" in p.name
            else OLD_MIMIC_COLUMNS
            if "mimics" in p.name
            else list(df.columns)
        )
        h.update(df[cols].round(4).to_csv(sep="\t", index=False).encode())
    return h.hexdigest(), moments


def test_default_output_unchanged(tmp_path):
    synthesize(
        SynthOptions(out=tmp_path, n_subjects=1, seed=11, preset="tiny", n_cmb=3),
        log=lambda m: None,
    )
    labels_sha256, moments = _fingerprint(tmp_path)
    assert labels_sha256 == DEFAULT_LABELS_SHA256
    assert sorted(moments) == sorted(DEFAULT_IMAGE_MOMENTS)
    for rel, expected in DEFAULT_IMAGE_MOMENTS.items():
        np.testing.assert_allclose(moments[rel], expected, rtol=1e-6, err_msg=rel)
    truth = tmp_path / TRUTH / "sub-01/swi"
    cmbs = pd.read_csv(truth / "sub-01_label-CMB_dseg.tsv", sep="\t")
    assert cmbs.touches_vein.dtype == bool
    mimics = pd.read_csv(truth / "sub-01_mimics.tsv", sep="\t")
    veins = mimics[mimics.type.str.startswith("vein")]
    assert set(veins.type) == {"vein_medullary", "vein_pial"} and set(veins.vein_shape) == {
        "bent",
        "surface_walk",
    }
    assert (
        veins.parent_vein.isna().all()
        and mimics[~mimics.type.str.startswith("vein")].start_x.isna().all()
    )
    assert "vein_model" not in json.loads((truth / "sub-01_synth.json").read_text())


@pytest.fixture(scope="module")
def randomized(tmp_path_factory):
    out = tmp_path_factory.mktemp("randomized") / "bids"
    synthesize(
        SynthOptions(
            out=out,
            n_subjects=1,
            seed=5,
            preset="tiny",
            vein_model="randomized",
            n_cmb=20,
            n_veins=50,
        ),
        log=lambda m: None,
    )
    truth = out / TRUTH / "sub-01/swi"
    return (
        out,
        pd.read_csv(truth / "sub-01_mimics.tsv", sep="\t"),
        pd.read_csv(truth / "sub-01_label-CMB_dseg.tsv", sep="\t"),
        json.loads((truth / "sub-01_synth.json").read_text()),
    )


def test_randomized_veins_in_the_mimics_table(randomized):
    _, mimics, _, params = randomized
    veins = mimics[mimics.type.str.startswith("vein")]
    assert len(veins) == 50 and params["vein_model"] == "randomized"
    rand = veins[veins.type == "vein_randomized"]
    assert len(rand) >= 30 and {"straight", "curved", "branch"} <= set(rand["vein_shape"])
    assert rand.radius_mm.between(*RADIUS_MM).all()
    assert rand.length_mm.between(LENGTH_MM[0] - 0.01, LENGTH_MM[1]).all()
    start, end = (
        veins[["start_x", "start_y", "start_z"]].to_numpy(),
        veins[["end_x", "end_y", "end_z"]].to_numpy(),
    )
    d = (end - start) / np.linalg.norm(end - start, axis=1, keepdims=True)
    np.testing.assert_allclose(d, veins[["direction_x", "direction_y", "direction_z"]], atol=1e-3)
    np.testing.assert_allclose(
        np.degrees(np.arccos(np.abs(d[:, 2]))), veins.angle_to_b0_deg, atol=0.05
    )
    # Aimed in scanner space: a third within 20 degrees of B0, the rest spread out. (The share exactly along
    # B0, 7 %, is too small to show reliably in 38 veins: random_direction's doctest checks it on 2000.)
    assert 0.25 <= (rand.angle_to_b0_deg <= 20).mean() <= 0.55
    assert (rand.angle_to_b0_deg > 70).any()
    # Straight veins: the start-to-end chord is the path.
    straight = rand[rand["vein_shape"] == "straight"]
    chord = (
        straight[["end_x", "end_y", "end_z"]].to_numpy()
        - straight[["start_x", "start_y", "start_z"]].to_numpy()
    )
    np.testing.assert_allclose(np.linalg.norm(chord, axis=1), straight.length_mm, rtol=1e-3)
    branches = rand[rand["vein_shape"] == "branch"]
    assert branches.parent_vein.isin(veins.vein_id).all()
    assert rand[rand["vein_shape"] != "branch"].parent_vein.isna().all()
    assert sorted(veins.vein_id) == list(range(1, 51))


@pytest.fixture(scope="module")
def subject():
    model = build_head_model(2)
    rng = np.random.default_rng(3)
    warp, pose = random_warp(rng), random_pose(rng)
    veins = place_random_veins(model, warp, pose, rng, 60, first_id=100)
    return model, warp, pose, rng, veins


def _copy(lesions):
    """Lesions with their own sources, so that mapping them to subject space leaves the fixture's in MNI space."""
    return [
        les.__class__(
            les.source.__class__(**les.source.__dict__),
            les.mni,
            les.mars_category,
            les.mars_region,
            les.hemisphere,
            les.atlas_label,
        )
        for les in lesions
    ]


def _axes(veins, pose=None):
    """{vein_id: (path, radius, extra)}, in scanner space of ``pose`` (MNI when None)."""
    out = {}
    for les in veins:
        path = les.source.extra["path"]
        if pose is not None:
            path = path @ pose[:3, :3].T + pose[:3, 3]
        out[les.source.extra["vein_id"]] = (path, les.source.radius_mm, les.source.extra)
    return out


def test_randomized_vein_shapes(subject):
    model, warp, pose, _, veins = subject
    lesions = to_subject_space(_copy(veins), warp)
    axes = _axes(lesions, pose)
    assert len(axes) == 60
    # Curved veins leave their chord; straight ones stay on it (in scanner space, where they were drawn).
    bend = {
        v: distance_to_path(p, p[[0, -1]]).max()
        for v, (p, _, e) in axes.items()
        if e["shape"] != "branch"
    }
    shapes = {v: e["shape"] for v, (_, _, e) in axes.items()}
    assert max(bend[v] for v in bend if shapes[v] == "curved") > 3.0
    assert max(bend[v] for v in bend if shapes[v] == "straight") < 0.01
    # A branch starts on its parent's axis.
    branches = [(p, e["parent"]) for p, _, e in axes.values() if e["shape"] == "branch"]
    assert branches and all(
        distance_to_path(p[:1], axes[parent][0])[0] < 0.01 for p, parent in branches
    )
    # Some veins pass across others they are not branched from.
    crossings = 0
    ids = list(axes)
    for n, a in enumerate(ids):
        for b in ids[n + 1 :]:
            (pa, ra, ea), (pb, rb, eb) = axes[a], axes[b]
            if (
                b == ea["parent"]
                or a == eb["parent"]
                or (ea["parent"] is not None and ea["parent"] == eb["parent"])
            ):
                continue
            crossings += distance_to_path(pa, pb).min() < ra + rb + 0.5
    assert crossings >= 3
    # Some end freely in white matter (not at the brain's edge).
    ends = np.vstack([les.source.extra["path"][[0, -1]] for les in veins])
    ijk = np.round(model.mni_to_index(ends)).astype(int)
    assert (model.wm[tuple(ijk.T)] > 0.5).sum() >= 10
    # Pieces are guarded at their joints and cover the whole vein.
    for vid, (path, _, _) in _axes(veins).items():
        pieces = [les.source for les in veins if les.source.extra["vein_id"] == vid]
        assert [p.extra["guards"][0] for p in pieces] == [False] + [True] * (len(pieces) - 1)
        assert [p.extra["guards"][1] for p in pieces] == [True] * (len(pieces) - 1) + [False]


def test_guarded_pieces_add_up_to_one_tube():
    aff = np.diag([0.5, 0.5, 2.0, 1.0])
    aff[:3, 3] = -np.array([16.0, 16.0, 24.0])
    shape = (64, 64, 24)
    a, b = np.array([-6.0, -3.0, -8.0]), np.array([7.0, 4.0, 9.0])
    path = a + np.linspace(0, 1, 18)[:, None] * (b - a)

    def occupancy(sources):
        occ = np.zeros(shape)
        for e in simulate_sources(sources, aff, shape, 3.0, [0.02]):
            occ[e.slices] += e.occupancy
        return occ

    whole = occupancy([Source("vein", path[[0, -1]], 1.0, 0.4)])
    pieces = occupancy(
        [
            Source("vein", path[[0, 9, 10]], 1.0, 0.4, extra={"guards": (False, True)}),
            Source("vein", path[[8, 9, 17]], 1.0, 0.4, extra={"guards": (True, False)}),
        ]
    )
    capped = occupancy(
        [Source("vein", path[[0, 9]], 1.0, 0.4), Source("vein", path[[9, 17]], 1.0, 0.4)]
    )
    np.testing.assert_allclose(pieces, whole, atol=1e-3)  # float32 sub-voxel sums
    assert capped.max() > 1.2  # overlapping caps: a bead at the joint


def test_touches_vein_is_geometric_and_touching_cmbs_are_placed(subject):
    model, warp, pose, rng, veins = subject
    veins = place_veins(model, warp, rng, 3, 3) + _copy(veins)
    prior = LOCATION_PRIORS["mixed"]
    touching = place_touching_cmbs(model, warp, pose, veins, 8, rng, prior)
    others = place_cmbs(model, warp, 10, rng, prior, avoid_veins=veins, existing=touching)
    assert len(touching) == 8 and len(others) == 10
    assert [c.source.label for c in touching + others] == list(range(1, 19))
    lesions = touching + others + veins
    to_subject_space(lesions, warp)
    axes = list(_axes(veins, pose).values())
    fine = [
        (np.vstack([np.linspace(p0, p1, 200) for p0, p1 in zip(p[:-1], p[1:])]), r)
        for p, r, _ in axes
    ]
    for scan_pose in (pose, random_pose(np.random.default_rng(8))):
        centre = scan_pose[:3, :3] @ np.array([0.0, -18.0, 12.0]) + scan_pose[:3, 3]
        affine = acquisition_affine(
            np.random.default_rng(0), (1.0, 1.0, 1.0), (260, 260, 260), centre=centre
        )
        table = cmb_table(lesions, scan_pose, affine, {}, (260, 260, 260))
        assert len(table) == 18
        scanner_fine = [
            (
                (pts - pose[:3, 3]) @ np.linalg.inv(pose[:3, :3]).T @ scan_pose[:3, :3].T
                + scan_pose[:3, 3],
                r,
            )
            for pts, r in fine
        ]
        for row, cmb in zip(table.itertuples(), touching + others):
            xyz = np.array([row.x_mm, row.y_mm, row.z_mm])
            gap = min(np.linalg.norm(pts - xyz, axis=1).min() - r for pts, r in scanner_fine)
            assert (
                row.touches_vein == (gap <= row.radius_mm + 0.5)
                or abs(gap - row.radius_mm - 0.5) < 0.02
            )
            assert row.touches_vein == any(cmb is t for t in touching)


def test_randomized_cohort_marks_touching_cmbs(randomized):
    _, mimics, cmbs, _ = randomized
    assert (
        cmbs.touches_vein.dtype == bool and cmbs.touches_vein.any() and not cmbs.touches_vein.all()
    )


def test_randomized_preset_draws_within_its_ranges():
    r = RANDOMIZED
    draws = [draw_acquisition("randomized", np.random.default_rng([s, 1])) for s in range(300)]
    assert {a.b0 for a, _ in draws} == {1.5, 3.0, 7.0}
    for acq, site in draws:
        assert acq.name == "randomized" and site.b0 == acq.b0 and site in SITES
        assert (
            acq.voxel_mm[0] == acq.voxel_mm[1]
            and r["in_plane_mm"][0] <= acq.voxel_mm[0] <= r["in_plane_mm"][1]
        )
        assert r["slice_mm"][0] <= acq.voxel_mm[2] <= r["slice_mm"][1]
        lo, hi = r["te_ms"][acq.b0]
        tes = np.array(acq.tes) * 1000
        assert tes.min() >= 5.0 and tes.max() <= hi + 0.01 and (len(tes) > 1 or tes[0] >= lo)
        assert (acq.layout == "MEGRE") == (len(tes) > 1) and np.all(np.diff(tes) > 0)
        assert max(acq.matrix[:2]) <= r["max_in_plane"] and np.prod(acq.matrix) <= r["max_voxels"]
        fov = np.array(acq.voxel_mm) * np.array(acq.matrix)
        assert (fov[:2] >= 180).all() and fov[2] >= 60
        assert all(lim[0] <= f <= lim[1] for f, lim in zip(acq.fov_mm, r["fov_mm"]))
        assert (
            r["snr"][0] <= acq.snr <= r["snr"][1]
            and r["bias_scale"][0] <= acq.bias_scale <= r["bias_scale"][1]
        )
        assert r["contrast_jitter"][0] <= acq.contrast_jitter <= r["contrast_jitter"][1]
    tes7 = [t for a, _ in draws if a.b0 == 7.0 for t in a.tes]
    tes15 = [t for a, _ in draws if a.b0 == 1.5 for t in a.tes]
    assert max(tes7) <= 0.02501 < max(tes15)
    assert 0.15 < np.mean([a.multi_echo for a, _ in draws]) < 0.35
    assert {a.layout for a, _ in draws} == {"GRE", "swi-swi", "swi-anat", "T2starw", "MEGRE"}
    acq, _ = draw_acquisition("randomized", np.random.default_rng(0), slice_mm=3.0)
    assert acq.voxel_mm[2] == 3.0 and np.prod(acq.matrix) <= r["max_voxels"]


def test_7t_is_accepted_and_scales_the_physics(tmp_path):
    validate_options(
        SynthOptions(out=tmp_path, n_subjects=1, preset="randomized", field_strength=7.0)
    )
    assert _r2s_at_field(21.0, 7.0) == pytest.approx(21.0 * (0.35 + 0.65 * 7.0 / 3.0))
    assert blooming_factor(1.0, 7.0, 0.02) > blooming_factor(1.0, 3.0, 0.02)


def test_randomized_preset_scan_ingests(tmp_path):
    from cmb.ingest import ingest_subject
    from cmb.ingest_plan import plan_inputs

    # Seed 65 draws a small 7 T multi-echo scan (1.1 M voxels): the costly ones are the fine ones.
    acq, site = draw_acquisition("randomized", np.random.default_rng([65, 1]))
    assert acq.b0 == 7.0 and acq.layout == "MEGRE" and site.b0 == 7.0
    bids = tmp_path / "bids"
    assert (
        main(
            [
                "synth",
                "--out",
                str(bids),
                "--n-subjects",
                "1",
                "--seed",
                "65",
                "--preset",
                "randomized",
                "--vein-model",
                "randomized",
                "--n-cmb",
                "4",
                "--n-veins",
                "30",
            ]
        )
        == 0
    )
    params = json.loads(next((bids / TRUTH).rglob("*_synth.json")).read_text())
    assert params["preset"] == "randomized" and params["field_strength"] == 7.0
    assert params["matrix"] == list(acq.matrix) and params["echo_times"] == list(acq.tes)
    assert params["fov_mm"] == list(acq.fov_mm) and params["bias_field_scale"] == acq.bias_scale
    assert params["contrast_jitter_scale"] == acq.contrast_jitter and params["site"] == site.name
    (record,) = plan_inputs(bids, tmp_path / "db")
    assert record.kind is not None and len(record.magnitude) == len(acq.tes)
    report = ingest_subject(record, tmp_path / "o" / "mag.nii.gz", tmp_path / "o" / "phase.nii.gz")
    mag = nib.load(tmp_path / "o" / "mag.nii.gz")
    assert mag.shape == acq.matrix and report["n_echoes"] == len(acq.tes)
    assert np.isfinite(mag.get_fdata()).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--vein-model", "fractal"], "--vein-model must be one of anatomical, randomized"),
        (["--n-veins", "-1", "--vein-model", "randomized"], "--n-veins must be between 0 and 200"),
        (
            ["--preset", "randomized", "--field-strength", "50"],
            "impossible physics: --field-strength",
        ),
        (
            ["--preset", "randomized", "--slice-thickness", "40"],
            "impossible physics: --slice-thickness",
        ),
    ],
)
def test_bad_options_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["synth", "--out", str(out), "--n-subjects", "1", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()


def test_the_randomized_preset_draws_cmbs_of_every_size(tmp_path):
    assert cmb_size_model(SynthOptions(out=tmp_path, n_subjects=1, preset="randomized")) == "wide"
    assert cmb_size_model(SynthOptions(out=tmp_path, n_subjects=1, preset="mixed")) == "typical"
    with pytest.raises(SynthError, match="--cmb-sizes"):
        validate_options(SynthOptions(out=tmp_path, n_subjects=1, cmb_sizes="huge"))
    radii = {}
    for sizes in ("typical", "wide"):
        out = tmp_path / sizes
        synthesize(
            SynthOptions(out=out, n_subjects=1, seed=7, preset="tiny", n_cmb=30, cmb_sizes=sizes),
            log=lambda m: None,
        )
        truth = out / TRUTH / "sub-01/swi"
        assert (
            json.loads((truth / "sub-01_synth.json").read_text()).get("cmb_sizes", "typical")
            == sizes
        )
        radii[sizes] = pd.read_csv(truth / "sub-01_label-CMB_dseg.tsv", sep="\t")["radius_mm"]
    # the same blooming at the same field and TE: a wide draw holds far more large CMBs
    big = {k: float((v > np.quantile(radii["typical"], 0.9)).mean()) for k, v in radii.items()}
    assert big["wide"] >= 0.3 > big["typical"]
