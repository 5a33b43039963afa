"""MARS (Microbleed Anatomical Rating Scale) regions from FreeSurfer-numbered labels.

One lookup table, :data:`FREESURFER_MARS`, maps every label number of the parcellations
cmb reads (the packaged Desikan-Killiany aparc+aseg atlas in MNI space, a cohort's own
FreeSurfer ``aseg``/``aparc+aseg``, FastSurfer's ``aparc.DKTatlas+aseg``, SynthSeg's 32
labels and its ``--parc`` output) to a MARS region or to a tissue class that geometry
decides. Its MARS assignments follow Gregoire et al. 2009 (Neurology 73:1759-1766, "The
Microbleed Anatomical Rating Scale (MARS)"); ``docs/mars.md`` lists and explains them.

:func:`build_mars_labels` turns a parcellation into a MARS map on its own grid (MNI or a
subject's native space):

- lobar: each lobe's cortex (the insula is lobar) plus the white matter within
  ``juxtacortical_mm`` of it, assigned to the nearest lobe (for the insula only within
  ``insula_juxtacortical_mm``: the extreme and external capsules beneath it are deep);
- deep: basal ganglia, thalamus with the ventral diencephalon (hypothalamus,
  subthalamic area: supratentorial, hence deep, never infratentorial), internal and
  external capsule, corpus callosum and the remaining deep/periventricular white matter.
  The capsules are not labelled in FreeSurfer parcellations and are derived
  geometrically: the internal capsule is the white matter lying between the lentiform
  nucleus and the caudate/thalamus, the external (with the extreme) capsule the white
  matter within ``capsule_mm`` of the putamen whose nearest cortex is the insula;
- infratentorial: brainstem and cerebellum (hemispheres and vermis);
- non-parenchyma: CSF and ventricles (label 200), and outside the brain (0).

Tissue the parcellation leaves unlabelled (label 0 inside the brain, "Unknown", the
atlas's gaps such as the cerebellar vermis of the packaged atlas) takes the class of the
nearest labelled tissue within ``label_search_mm``; beyond that it is
:data:`UNKNOWN_LABEL` (250), which localization resolves on the subject's own grid.

Label values are ``region code`` (1-13) for the left hemisphere and
``100 + region code`` for the right; midline structures are split by the sign of MNI x
(or, in native space, by the nearest lateralized label).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from cmb.config import default
from cmb.template import MNIResources

__all__ = [
    "REGIONS",
    "CATEGORY",
    "CODE",
    "RIGHT_OFFSET",
    "CSF_LABEL",
    "OUTSIDE_LABEL",
    "UNKNOWN_LABEL",
    "MARS_MAP_VERSION",
    "CEREBRAL_WHITE_MATTER",
    "CORTEX",
    "CSF",
    "UNLABELLED",
    "FREESURFER_MARS",
    "SYNTHSEG_LABELS",
    "MarsMap",
    "mars_class",
    "hemisphere_of_name",
    "is_parenchyma",
    "build_mars_labels",
    "build_mars_map",
    "label_table",
    "decode_label",
]

REGIONS = (
    "frontal",
    "parietal",
    "temporal",
    "occipital",
    "insula",
    "basal_ganglia",
    "thalamus",
    "internal_capsule",
    "external_capsule",
    "corpus_callosum",
    "deep_wm",
    "brainstem",
    "cerebellum",
)
CATEGORY = {
    **{r: "lobar" for r in REGIONS[:5]},
    **{r: "deep" for r in REGIONS[5:11]},
    **{r: "infratentorial" for r in REGIONS[11:]},
}
CODE = {r: i + 1 for i, r in enumerate(REGIONS)}
RIGHT_OFFSET = 100
CSF_LABEL = 200
OUTSIDE_LABEL = 0
#: Version of the map :func:`build_mars_map` draws; part of the keys of cached maps (and of
#: the head models that hold one), so that a change to the lookup table or the geometry
#: rules is never read back from an older cache.
MARS_MAP_VERSION = 2
#: Tissue with no labelled tissue within ``label_search_mm``: MARS category ``unknown``.
UNKNOWN_LABEL = 250

# Tissue classes of the lookup table that are not MARS regions.
#: Cerebral white matter: juxtacortical (lobar), capsule or deep white matter, by geometry.
CEREBRAL_WHITE_MATTER = "cerebral_white_matter"
#: Cerebral cortex without a lobe (aseg, SynthSeg): lobar, the lobe from the MNI atlas.
CORTEX = "cortex"
#: CSF, ventricles, choroid plexus, vessels: never a microbleed.
CSF = "csf"
#: No tissue class (label 0 / Unknown, non-white-matter hypointensities, optic chiasm):
#: takes the nearest labelled tissue.
UNLABELLED = "unlabelled"

_LOBE_OF_DK_PARCEL = {
    # Cingulate: anterior parts frontal, posterior and isthmus parietal; the medial
    # temporal cortex (entorhinal, parahippocampal) temporal (Gregoire 2009, lobar regions).
    "frontal": (
        "superiorfrontal rostralmiddlefrontal caudalmiddlefrontal parsopercularis "
        "parstriangularis parsorbitalis lateralorbitofrontal medialorbitofrontal "
        "precentral paracentral frontalpole rostralanteriorcingulate caudalanteriorcingulate"
    ),
    "parietal": (
        "superiorparietal inferiorparietal supramarginal postcentral precuneus "
        "posteriorcingulate isthmuscingulate"
    ),
    "temporal": (
        "superiortemporal middletemporal inferiortemporal bankssts fusiform "
        "transversetemporal entorhinal temporalpole parahippocampal"
    ),
    "occipital": "lateraloccipital lingual cuneus pericalcarine",
    "insula": "insula",
}
#: Desikan-Killiany parcels in FreeSurferColorLUT order (1000 + n left, 2000 + n right).
_DK_PARCELS = (
    "unknown bankssts caudalanteriorcingulate caudalmiddlefrontal corpuscallosum cuneus entorhinal "
    "fusiform inferiorparietal inferiortemporal isthmuscingulate lateraloccipital lateralorbitofrontal "
    "lingual medialorbitofrontal middletemporal parahippocampal paracentral parsopercularis parsorbitalis "
    "parstriangularis pericalcarine postcentral posteriorcingulate precentral precuneus "
    "rostralanteriorcingulate rostralmiddlefrontal superiorfrontal superiorparietal superiortemporal "
    "supramarginal frontalpole temporalpole transversetemporal insula"
).split()


def _dk_cortex() -> dict[int, tuple[str, str]]:
    out = {}
    for n, parcel in enumerate(_DK_PARCELS):
        lobe = next(
            (lobe for lobe, parcels in _LOBE_OF_DK_PARCEL.items() if parcel in parcels.split()),
            None,
        )
        # "unknown" cortex (1000/2000) has no lobe anywhere: it takes the nearest labelled tissue.
        cls = lobe or {"corpuscallosum": "corpus_callosum", "unknown": UNLABELLED}.get(
            parcel, CORTEX
        )
        for base, hemi in ((1000, "lh"), (2000, "rh")):
            out[base + n] = (f"ctx-{hemi}-{parcel}", cls)
    return out


def _pair(left: int, right: int, name: str, cls: str) -> dict[int, tuple[str, str]]:
    return {left: (f"Left-{name}", cls), right: (f"Right-{name}", cls)}


#: FreeSurferColorLUT label number -> (name, MARS region or tissue class). The one table
#: from label to MARS (docs/mars.md); every label of every parcellation cmb reads is here.
FREESURFER_MARS: dict[int, tuple[str, str]] = {
    0: ("Unknown", UNLABELLED),
    **_pair(2, 41, "Cerebral-White-Matter", CEREBRAL_WHITE_MATTER),
    **_pair(3, 42, "Cerebral-Cortex", CORTEX),
    **_pair(4, 43, "Lateral-Ventricle", CSF),
    **_pair(5, 44, "Inf-Lat-Vent", CSF),
    **_pair(7, 46, "Cerebellum-White-Matter", "cerebellum"),
    **_pair(8, 47, "Cerebellum-Cortex", "cerebellum"),
    **_pair(10, 49, "Thalamus", "thalamus"),  # "Thalamus-Proper" before FreeSurfer 7
    **_pair(11, 50, "Caudate", "basal_ganglia"),
    **_pair(12, 51, "Putamen", "basal_ganglia"),
    **_pair(13, 52, "Pallidum", "basal_ganglia"),
    14: ("3rd-Ventricle", CSF),
    15: ("4th-Ventricle", CSF),
    16: ("Brain-Stem", "brainstem"),
    **_pair(17, 53, "Hippocampus", "temporal"),
    **_pair(18, 54, "Amygdala", "temporal"),
    24: ("CSF", CSF),
    **_pair(26, 58, "Accumbens-area", "basal_ganglia"),
    # Ventral diencephalon (hypothalamus, subthalamic nucleus, substantia nigra's upper
    # part): supratentorial, deep with the thalamus (never infratentorial).
    **_pair(28, 60, "VentralDC", "thalamus"),
    **_pair(30, 62, "vessel", CSF),
    **_pair(31, 63, "choroid-plexus", CSF),
    72: ("5th-Ventricle", CSF),
    77: ("WM-hypointensities", CEREBRAL_WHITE_MATTER),
    **_pair(78, 79, "WM-hypointensities", CEREBRAL_WHITE_MATTER),
    80: ("non-WM-hypointensities", UNLABELLED),
    **_pair(81, 82, "non-WM-hypointensities", UNLABELLED),
    85: ("Optic-Chiasm", UNLABELLED),
    **{
        v: (f"CC_{p}", "corpus_callosum")
        for v, p in zip(
            range(251, 256), ("Posterior", "Mid_Posterior", "Central", "Mid_Anterior", "Anterior")
        )
    },
    **_dk_cortex(),
}
#: SynthSeg's 32 labels (FreeSurfer numbers; ``--parc`` adds the Desikan-Killiany cortex).
SYNTHSEG_LABELS = (
    0,
    2,
    3,
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
    41,
    42,
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
)
_NAME_ALIASES = {"Thalamus-Proper": "Thalamus", "Thalamus-Proper*": "Thalamus"}


def mars_class(label: int, name: str | None = None) -> str:
    """MARS region or tissue class of a FreeSurfer label (:data:`FREESURFER_MARS`).

    ``name``, when given (a label table beside a parcellation), must agree with the
    table's name for that number, so that a parcellation numbered otherwise is refused
    rather than mislabelled.

    >>> mars_class(60), mars_class(1035), mars_class(16), mars_class(3)
    ('thalamus', 'insula', 'brainstem', 'cortex')
    >>> mars_class(10, "Left-Thalamus-Proper")
    'thalamus'
    """
    label = int(label)
    if label not in FREESURFER_MARS:
        raise KeyError(
            f"label {label} ({name or 'no name'}) is not a FreeSurfer label cmb maps to MARS "
            "(see docs/mars.md)"
        )
    known, cls = FREESURFER_MARS[label]
    if name is not None and _canonical(name) != _canonical(known):
        raise KeyError(
            f"label {label} is named {name!r}, but FreeSurferColorLUT names it {known!r}: "
            "the parcellation is not FreeSurfer-numbered (see docs/mars.md)"
        )
    return cls


def _canonical(name: str) -> str:
    name = str(name).strip()
    for old, new in _NAME_ALIASES.items():
        name = name.replace(old, new)
    return name.lower().replace("_", "-")


def hemisphere_of_name(name: str) -> str | None:
    """``"L"``, ``"R"`` or None (midline) from a FreeSurfer label name.

    >>> hemisphere_of_name("ctx-rh-insula"), hemisphere_of_name("Left-VentralDC"), hemisphere_of_name("Brain-Stem")
    ('R', 'L', None)
    """
    if name.startswith(("Left-", "ctx-lh-")):
        return "L"
    if name.startswith(("Right-", "ctx-rh-")):
        return "R"
    return None


def decode_label(value: int) -> tuple[str, str, str]:
    """``(mars_category, mars_region, hemisphere)`` of a map value.

    >>> decode_label(101), decode_label(12), decode_label(200)
    (('lobar', 'frontal', 'R'), ('infratentorial', 'brainstem', 'L'), ('non-parenchyma', 'csf', 'n/a'))
    >>> decode_label(250)
    ('unknown', 'unknown', 'n/a')
    """
    value = int(value)
    if value == CSF_LABEL:
        return "non-parenchyma", "csf", "n/a"
    if value == OUTSIDE_LABEL:
        return "non-parenchyma", "outside_brain", "n/a"
    if value == UNKNOWN_LABEL:
        return "unknown", "unknown", "n/a"
    hemi = "R" if value > RIGHT_OFFSET else "L"
    region = REGIONS[value - (RIGHT_OFFSET if hemi == "R" else 0) - 1]
    return CATEGORY[region], region, hemi


def is_parenchyma(labels) -> np.ndarray:
    """Whether MARS map values are a MARS region (not CSF, outside or unknown).

    >>> is_parenchyma(np.array([0, 1, 113, 200, 250])).tolist()
    [False, True, True, False, False]
    """
    labels = np.asarray(labels)
    region = np.where(labels > RIGHT_OFFSET, labels - RIGHT_OFFSET, labels)
    return (labels < CSF_LABEL) & (region >= 1) & (region <= len(REGIONS))


def label_table() -> pd.DataFrame:
    """BIDS dseg lookup table: ``index, name, mars_category, mars_region, hemisphere``."""
    rows = [(OUTSIDE_LABEL, "outside_brain", "non-parenchyma", "outside_brain", "n/a")]
    for offset, hemi in ((0, "L"), (RIGHT_OFFSET, "R")):
        for region in REGIONS:
            rows.append((CODE[region] + offset, f"{hemi}_{region}", CATEGORY[region], region, hemi))
    rows.append((CSF_LABEL, "csf", "non-parenchyma", "csf", "n/a"))
    rows.append((UNKNOWN_LABEL, "unknown", "unknown", "unknown", "n/a"))
    return pd.DataFrame(
        rows, columns=["index", "name", "mars_category", "mars_region", "hemisphere"]
    )


@dataclass(frozen=True)
class MarsMap:
    labels: np.ndarray  # int16 MARS label per voxel
    affine: np.ndarray


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels, as slices (the whole grid when empty)."""
    nz = np.nonzero(mask)
    if not len(nz[0]):
        return tuple(slice(0, n) for n in mask.shape)
    return tuple(
        slice(max(int(a.min()) - margin, 0), min(int(a.max()) + margin + 1, n))
        for a, n in zip(nz, mask.shape)
    )


def _nearest(mask: np.ndarray, zooms, box=None):
    """Distance (mm) to ``mask`` and index of its nearest voxel, within ``box``."""
    box = box or tuple(slice(0, n) for n in mask.shape)
    dist = np.full(mask.shape, np.inf, dtype=np.float32)
    idx = np.zeros((3, *mask.shape), dtype=np.int64)
    if mask[box].any():
        d, i = ndi.distance_transform_edt(~mask[box], sampling=zooms, return_indices=True)
        dist[box] = d
        for a in range(3):
            idx[(a, *box)] = i[a] + box[a].start
    return dist, idx


def _classes(
    parcellation: np.ndarray, names: dict[int, str] | None
) -> dict[int, tuple[str, str | None]]:
    """(class, hemisphere) of every label present; unmapped labels are one error."""
    out, missing = {}, []
    for value in np.unique(parcellation).tolist():
        name = (names or {}).get(int(value))
        try:
            cls = mars_class(value, name if value != 0 else None)
        except KeyError as err:
            missing.append(str(err).strip("'\""))
            continue
        out[int(value)] = (cls, hemisphere_of_name(FREESURFER_MARS[int(value)][0]))
    if missing:
        raise ValueError("parcellation labels without a MARS class: " + "; ".join(missing))
    return out


def build_mars_labels(
    parcellation: np.ndarray,
    affine: np.ndarray,
    *,
    names: dict[int, str] | None = None,
    brain: np.ndarray | None = None,
    tissue: np.ndarray | None = None,
    lobes: np.ndarray | None = None,
    right: np.ndarray | None = None,
    juxtacortical_mm: float = default("mars", "juxtacortical_mm"),
    insula_juxtacortical_mm: float = default("mars", "insula_juxtacortical_mm"),
    capsule_mm: float = default("mars", "capsule_mm"),
    label_search_mm: float = default("mars", "label_search_mm"),
) -> MarsMap:
    """Rasterize MARS regions from a FreeSurfer-numbered parcellation on its own grid.

    Parameters
    ----------
    parcellation : (X, Y, Z) ndarray of int
        FreeSurfer label numbers (:data:`FREESURFER_MARS`).
    affine : (4, 4) ndarray
        Voxel to world (mm); distances are in mm.
    names : dict, optional
        Label names of the parcellation's own table, checked against the lookup table.
    brain : (X, Y, Z) bool, optional
        Where label 0 is inside the brain: CSF there, unless ``tissue`` says tissue.
        Without it, label 0 is outside the brain.
    tissue : (X, Y, Z) bool, optional
        Where label 0 inside ``brain`` is tissue the atlas left unlabelled.
    lobes : (X, Y, Z) ndarray of int, optional
        A MARS map on the same grid whose lobes name the lobe of cortex the
        parcellation gives without one (aseg, SynthSeg: labels 3/42); required then.
    right : (X, Y, Z) bool, optional
        Right side of the midline for midline labels; default: the side of the
        nearest lateralized label.
    juxtacortical_mm, insula_juxtacortical_mm : float
        White matter within this distance of a lobe's cortex (of the insula's) belongs to it.
    capsule_mm : float
        Reach of the internal capsule from the lentiform nucleus and from the
        caudate/thalamus, and of the external capsule from the putamen.
    label_search_mm : float
        Unlabelled tissue takes the class of the nearest labelled tissue within this
        distance; beyond it is :data:`UNKNOWN_LABEL`.

    Examples
    --------
    >>> seg = np.zeros((12, 6, 6), int); seg[1:11, 1:5, 1:5] = 8; seg[6:11, 1:5, 1:5] = 47; seg[5] = 0
    >>> mars = build_mars_labels(seg, np.eye(4), tissue=np.ones(seg.shape, bool), brain=np.ones(seg.shape, bool))
    >>> [decode_label(v) for v in mars.labels[[2, 5, 8], 2, 2]]  # a gap between two cerebellar labels
    [('infratentorial', 'cerebellum', 'L'), ('infratentorial', 'cerebellum', 'L'), ('infratentorial', 'cerebellum', 'R')]
    """
    seg = np.asarray(parcellation).astype(np.int32)
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    classes = _classes(seg, names)
    region_lut = {
        r: i for i, r in enumerate((*REGIONS, CEREBRAL_WHITE_MATTER, CORTEX, CSF, UNLABELLED))
    }
    cls = np.full(seg.shape, region_lut[UNLABELLED], np.int16)
    hemi = np.zeros(seg.shape, np.int8)  # 1 left, 2 right, 0 midline/unknown
    for value, (c, h) in classes.items():
        sel = seg == value
        cls[sel] = region_lut[c]
        hemi[sel] = {"L": 1, "R": 2}.get(h, 0)
    brain = np.asarray(brain, bool) if brain is not None else np.zeros(seg.shape, bool)
    tissue = np.asarray(tissue, bool) if tissue is not None else np.zeros(seg.shape, bool)
    zero = seg == 0
    outside = zero & ~brain
    cls[zero & brain & ~tissue] = region_lut[CSF]
    cls[outside] = -1

    # Cortex without a lobe: the lobe of the nearest lobar voxel of ``lobes``.
    cortex_only = cls == region_lut[CORTEX]
    if cortex_only.any():
        if lobes is None:
            raise ValueError(
                "the parcellation labels cortex without lobes (aseg/SynthSeg labels 3, 42): "
                "a lobe map (the atlas route's MARS map) is needed"
            )
        lobe_code = np.asarray(lobes) % RIGHT_OFFSET
        lobar = (
            (np.asarray(lobes) > 0)
            & (np.asarray(lobes) < CSF_LABEL)
            & (lobe_code >= 1)
            & (lobe_code <= 5)
        )
        if not lobar.any():
            raise ValueError("the lobe map has no lobar voxel")
        _, idx = _nearest(lobar, zooms, _bbox(cortex_only | lobar, 1))
        cls[cortex_only] = (lobe_code[tuple(idx)][cortex_only] - 1).astype(np.int16)

    # Unlabelled tissue: the class of the nearest labelled tissue within label_search_mm.
    unlabelled = cls == region_lut[UNLABELLED]
    labelled_tissue = (cls >= 0) & (cls < region_lut[CSF])
    if unlabelled.any():
        d, idx = _nearest(
            labelled_tissue,
            zooms,
            _bbox(unlabelled, int(np.ceil(label_search_mm / zooms.min())) + 1),
        )
        near = unlabelled & (d <= label_search_mm)
        cls[near] = cls[tuple(idx)][near]
        hemi[near] = hemi[tuple(idx)][near]
    unknown = cls == region_lut[UNLABELLED]

    code = np.zeros(seg.shape, np.int16)
    for r in REGIONS:
        code[cls == region_lut[r]] = CODE[r]
    wm = cls == region_lut[CEREBRAL_WHITE_MATTER]

    # Lobar white matter: nearest cortical lobe within the juxtacortical distance.
    cortex = (code >= 1) & (code <= CODE["insula"])
    reach = max(juxtacortical_mm, insula_juxtacortical_mm, capsule_mm)
    box = _bbox(wm, int(np.ceil(reach / zooms.min())) + 2)
    dist, idx = _nearest(cortex, zooms, box)
    nearest_lobe = code[tuple(idx)]

    # Capsules, from the geometry of the deep grey nuclei.
    def in_class(*names):
        return np.isin(
            seg,
            [v for v, n in ((v, FREESURFER_MARS[v][0]) for v in classes) if n.endswith(names)],
        )

    lentiform = in_class("Putamen", "Pallidum")
    putamen = in_class("Putamen")
    medial = in_class("Caudate", "Thalamus")
    internal = np.zeros(seg.shape, bool)
    external = np.zeros(seg.shape, bool)
    if lentiform.any() and medial.any():
        deep = _bbox(lentiform | medial, margin=int(np.ceil(2 * capsule_mm / zooms.min())) + 1)
        d_lent = ndi.distance_transform_edt(~lentiform[deep], sampling=zooms)
        d_med = ndi.distance_transform_edt(~medial[deep], sampling=zooms)
        d_put = (
            ndi.distance_transform_edt(~putamen[deep], sampling=zooms) if putamen.any() else np.inf
        )
        internal[deep] = wm[deep] & (d_lent <= capsule_mm) & (d_med <= capsule_mm)
        under_insula = (nearest_lobe[deep] == CODE["insula"]) & (
            dist[deep] > insula_juxtacortical_mm
        )
        external[deep] = wm[deep] & ~internal[deep] & (d_put <= capsule_mm) & under_insula
    code[internal] = CODE["internal_capsule"]
    code[external] = CODE["external_capsule"]
    rest = wm & ~internal & ~external
    limit = np.where(nearest_lobe == CODE["insula"], insula_juxtacortical_mm, juxtacortical_mm)
    juxta = rest & (dist <= limit) & (nearest_lobe > 0)
    code[juxta] = nearest_lobe[juxta]
    code[rest & ~juxta] = CODE["deep_wm"]

    # Hemisphere: from the label where it has one, else ``right``, else the nearest lateralized label.
    if right is None:
        lateral = hemi > 0
        _, idx = _nearest(lateral, zooms, _bbox(lateral, 1)) if lateral.any() else (None, None)
        right = (hemi[tuple(idx)] == 2) if idx is not None else np.zeros(seg.shape, bool)
    is_right = np.where(hemi > 0, hemi == 2, np.asarray(right, bool))
    labels = np.where(code > 0, code + is_right * RIGHT_OFFSET, 0).astype(np.int16)
    labels[cls == region_lut[CSF]] = CSF_LABEL
    labels[unknown] = UNKNOWN_LABEL
    labels[outside] = OUTSIDE_LABEL
    return MarsMap(labels=labels, affine=np.asarray(affine, float))


def build_mars_map(
    mni: MNIResources,
    juxtacortical_mm: float = default("mars", "juxtacortical_mm"),
    capsule_mm: float = default("mars", "capsule_mm"),
    insula_juxtacortical_mm: float = default("mars", "insula_juxtacortical_mm"),
    label_search_mm: float = default("mars", "label_search_mm"),
) -> MarsMap:
    """The MNI MARS map: :func:`build_mars_labels` on the packaged Desikan-Killiany atlas.

    Label 0 inside the template brain is tissue where the ICBM priors say so
    (GM + WM > 0.5: the atlas's thin cortex and its vermis gap), else CSF; midline
    structures are split by the sign of MNI x.
    """
    x_mm = (mni.affine[0, :3] @ np.indices(mni.dk.shape).reshape(3, -1) + mni.affine[0, 3]).reshape(
        mni.dk.shape
    )
    return build_mars_labels(
        mni.dk,
        mni.affine,
        names=mni.dk_names,
        brain=mni.brain,
        tissue=mni.brain & ((mni.gm + mni.wm) > 0.5),
        right=x_mm > 0,
        juxtacortical_mm=juxtacortical_mm,
        insula_juxtacortical_mm=insula_juxtacortical_mm,
        capsule_mm=capsule_mm,
        label_search_mm=label_search_mm,
    )
