"""The MARS lookup table (cmb.mars_region.FREESURFER_MARS), the nearest-label fallback and
the boundary measures of localization (cmb.localize.label_neighbourhood)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cmb.localize import localize_candidates
from cmb.mars_region import (
    CATEGORY,
    CEREBRAL_WHITE_MATTER,
    CODE,
    CORTEX,
    CSF,
    FREESURFER_MARS,
    REGIONS,
    SYNTHSEG_LABELS,
    UNLABELLED,
    build_mars_labels,
    build_mars_map,
    decode_label,
    mars_class,
)
from cmb.template import load_mni

CLASSES = set(REGIONS) | {CEREBRAL_WHITE_MATTER, CORTEX, CSF, UNLABELLED}

# FreeSurfer 7 aseg.mgz labels (FreeSurferColorLUT numbers, as `mri_segstats --ctab-default` lists them).
ASEG_LABELS = (
    0,
    2,
    4,
    5,
    7,
    8,
    10,
    11,
    12,
    13,
    14,
    15,
    16,
    17,
    18,
    24,
    26,
    28,
    30,
    31,
    41,
    43,
    44,
    46,
    47,
    49,
    50,
    51,
    52,
    53,
    54,
    58,
    60,
    62,
    63,
    72,
    77,
    85,
    251,
    252,
    253,
    254,
    255,
    3,
    42,
)


def test_every_label_of_the_packaged_atlas_is_in_the_table():
    mni = load_mni(2)
    present = np.unique(mni.dk).tolist()
    for value in present:
        name = mni.dk_names.get(int(value), "Unknown")
        assert mars_class(value, name if value else None) in CLASSES, (value, name)
    # the atlas's own names agree with FreeSurferColorLUT's for every label it lists
    for value, name in mni.dk_names.items():
        assert int(value) in FREESURFER_MARS, (value, name)


@pytest.mark.parametrize("labels", [ASEG_LABELS, SYNTHSEG_LABELS], ids=["aseg", "synthseg"])
def test_aseg_and_synthseg_label_sets_are_mapped(labels):
    for value in labels:
        assert mars_class(value) in CLASSES


def test_no_label_of_the_table_is_left_unmapped():
    for value, (name, cls) in FREESURFER_MARS.items():
        assert cls in CLASSES, (value, name, cls)
        if cls in REGIONS:
            assert CATEGORY[cls] in ("lobar", "deep", "infratentorial")
    # every cortical parcel but "unknown" names its lobe
    for value in (*range(1001, 1036), *range(2001, 2036)):
        assert FREESURFER_MARS[value][1] in {
            "frontal",
            "parietal",
            "temporal",
            "occipital",
            "insula",
            "corpus_callosum",
        }, FREESURFER_MARS[value]


def test_a_parcellation_numbered_otherwise_is_refused():
    with pytest.raises(KeyError, match="not FreeSurfer-numbered"):
        mars_class(17, "Left-Putamen")
    with pytest.raises(KeyError, match="not a FreeSurfer label"):
        mars_class(9999)


def test_ventral_diencephalon_is_deep_not_infratentorial():
    assert mars_class(28) == mars_class(60) == "thalamus"
    assert CATEGORY[mars_class(28)] == "deep"
    mars = build_mars_map(load_mni(2)).labels
    mni = load_mni(2)
    vdc = np.isin(mni.dk, [28, 60])
    cats = {decode_label(v)[0] for v in np.unique(mars[vdc])}
    assert cats == {"deep"}, cats


def test_unlabelled_voxel_next_to_cerebellum_is_infratentorial_with_its_distance():
    # A small aseg-numbered volume: left cerebellar cortex (8) with a 2-voxel unlabelled gap
    # (label 0 inside the brain: an atlas gap such as the vermis), 1 mm voxels.
    seg = np.zeros((24, 12, 12), np.int32)
    seg[2:22, 2:10, 2:10] = 8
    seg[10:12] = 0
    brain = np.zeros(seg.shape, bool)
    brain[2:22, 2:10, 2:10] = True
    mars = build_mars_labels(seg, np.eye(4), brain=brain, tissue=brain).labels
    assert decode_label(mars[11, 5, 5]) == ("infratentorial", "cerebellum", "L")

    # Localization: a kept detection centred where the map says "unknown" takes the nearest
    # labelled tissue and reports how far it was.
    native = np.full(seg.shape, 0, np.int16)
    native[2:22, 2:10, 2:10] = CODE["cerebellum"]
    native[9:13, 2:10, 2:10] = 250  # unknown: beyond the map's own search distance
    t = pd.DataFrame({"candidate_id": [1], "i": [10], "j": [5], "k": [5]})
    out = localize_candidates(t, None, native, brain)
    assert (
        out.loc[0, "mars_region"] == "cerebellum"
        and out.loc[0, "mars_category"] == "infratentorial"
    )
    assert out.loc[0, "atlas_label_distance_mm"] == pytest.approx(2.0)
    assert not out.loc[0, "rejected"]
    # beyond label_search_mm it stays unknown
    out = localize_candidates(t, None, native, brain, label_search_mm=1.0)
    assert out.loc[0, "mars_category"] == "unknown"


def test_a_detection_at_the_juxtacortical_deep_border_is_borderline():
    native = np.full((30, 12, 12), CODE["frontal"], np.int16)
    native[15:] = CODE["deep_wm"]
    t = pd.DataFrame(
        {"candidate_id": [1, 2], "i": [14, 4], "j": [6, 6], "k": [6, 6], "diameter_mm": [2.0, 2.0]}
    )
    out = localize_candidates(t, None, native, np.ones(native.shape, bool))
    near, far = out.loc[0], out.loc[1]
    assert near["mars_region"] == "frontal" and near["borderline"]
    assert near["mars_region_second"] == "deep_wm"
    assert near["mars_border_distance_mm"] == pytest.approx(1.0)
    assert 0.5 <= near["mars_category_confidence"] < 0.9
    assert not far["borderline"] and far["mars_category_confidence"] == 1.0
    assert far["mars_region_second"] == "n/a" and np.isnan(
        far["mars_border_distance_mm"]
    )  # 11 mm: beyond the search


def test_a_second_choice_of_the_same_category_is_not_borderline():
    native = np.full((30, 12, 12), CODE["basal_ganglia"], np.int16)
    native[15:] = CODE["thalamus"]
    t = pd.DataFrame({"candidate_id": [1], "i": [14], "j": [6], "k": [6], "diameter_mm": [2.0]})
    out = localize_candidates(t, None, native, np.ones(native.shape, bool)).loc[0]
    assert out["mars_region_second"] == "thalamus" and not out["borderline"]
    assert out["mars_category_confidence"] == 1.0


def test_freesurfer_aseg_fixture_maps_to_mars():
    """A small label volume carrying real aseg numbers, 1 mm, left hemisphere at low x."""
    seg = np.zeros((40, 30, 30), np.int32)
    seg[2:38, 2:28, 14:28] = 2  # cerebral white matter (left)
    seg[2:38, 2:28, 26:28] = 3  # cortex, lobe from the lobe map
    seg[10:16, 10:16, 16:22] = 12  # putamen
    seg[22:28, 10:16, 16:22] = 10  # thalamus
    seg[16:22, 10:16, 16:22] = 2  # white matter between them: internal capsule
    seg[10:16, 18:24, 16:22] = 28  # ventral diencephalon
    seg[2:38, 2:28, 2:8] = 8  # cerebellar cortex
    seg[2:38, 2:28, 8:12] = 16  # brainstem
    seg[30:34, 20:24, 16:20] = 4  # lateral ventricle
    lobes = np.zeros(seg.shape, np.int16)
    lobes[:20] = CODE["frontal"]
    lobes[20:] = CODE["parietal"]
    brain = seg > 0
    mars = build_mars_labels(seg, np.eye(4), brain=brain, lobes=lobes, capsule_mm=4.0).labels

    def at(*ijk):
        return decode_label(mars[ijk])[:2]

    assert at(12, 12, 18) == ("deep", "basal_ganglia")
    assert at(24, 12, 18) == ("deep", "thalamus")
    assert at(12, 20, 18) == ("deep", "thalamus")  # VentralDC
    assert at(19, 12, 18) == ("deep", "internal_capsule")
    assert at(5, 5, 4) == ("infratentorial", "cerebellum")
    assert at(5, 5, 10) == ("infratentorial", "brainstem")
    assert at(5, 5, 27) == ("lobar", "frontal")
    assert at(35, 5, 27) == ("lobar", "parietal")
    assert at(5, 5, 23) == ("lobar", "frontal")  # white matter 3 mm under the cortex: juxtacortical
    assert at(32, 22, 18) == ("non-parenchyma", "csf")
    assert at(35, 5, 15) == ("deep", "deep_wm")  # far from cortex and nuclei
    assert decode_label(mars[0, 0, 0])[1] == "outside_brain"
