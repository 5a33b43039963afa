"""MARS (Microbleed Anatomical Rating Scale) regions in MNI space.

The map is built from the packaged Desikan-Killiany (aparc+aseg) labels:

- lobar: each lobe's cortex plus the white matter within ``juxtacortical_mm``
  of it, assigned to the nearest lobe;
- deep: basal ganglia, thalamus, internal and external capsule, corpus
  callosum and the remaining deep/periventricular white matter. The capsules are
  not labelled in the atlas and are derived geometrically: the internal capsule
  is the white matter lying between the lentiform nucleus and the
  caudate/thalamus, the external capsule the thin band lateral to the putamen;
- infratentorial: brainstem (with the ventral diencephalon) and cerebellum;
- non-parenchyma: CSF and ventricles (label 200), and outside the brain (0).

Label values are ``region code`` (1-13) for the left hemisphere and
``100 + region code`` for the right; midline structures are split by the sign
of MNI x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from cmb.template import MNIResources

__all__ = [
    "REGIONS",
    "CATEGORY",
    "CSF_LABEL",
    "OUTSIDE_LABEL",
    "MarsMap",
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

_LOBE_OF_CORTEX = {
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
_SUBCORTICAL = {
    "Thalamus-Proper": "thalamus",
    "Thalamus": "thalamus",
    "Caudate": "basal_ganglia",
    "Putamen": "basal_ganglia",
    "Pallidum": "basal_ganglia",
    "Accumbens-area": "basal_ganglia",
    "Hippocampus": "temporal",
    "Amygdala": "temporal",
    "VentralDC": "brainstem",
    "Cerebellum-Cortex": "cerebellum",
    "Cerebellum-White-Matter": "cerebellum",
    "Brain-Stem": "brainstem",
    "WM-hypointensities": "deep_wm",
    "Optic-Chiasm": "deep_wm",
}
_NON_PARENCHYMA = (
    "Lateral-Ventricle",
    "Inf-Lat-Vent",
    "3rd-Ventricle",
    "4th-Ventricle",
    "CSF",
    "choroid-plexus",
    "vessel",
)


def _region_of_dk(name: str) -> str | None:
    """MARS region of one Desikan-Killiany label name; ``"csf"`` or None otherwise.

    >>> _region_of_dk("ctx-lh-precuneus"), _region_of_dk("Right-Pallidum")
    ('parietal', 'basal_ganglia')
    >>> _region_of_dk("Left-Lateral-Ventricle"), _region_of_dk("CC_Central")
    ('csf', 'corpus_callosum')
    """
    if name.startswith("ctx-"):
        parcel = name.split("-", 2)[2]
        for lobe, parcels in _LOBE_OF_CORTEX.items():
            if parcel in parcels.split():
                return lobe
        return None
    if name.startswith("CC_"):
        return "corpus_callosum"
    if any(name.endswith(p) for p in _NON_PARENCHYMA):
        return "csf"
    base = name.removeprefix("Left-").removeprefix("Right-")
    return _SUBCORTICAL.get(base)


def _hemisphere_of_dk(name: str) -> str | None:
    if name.startswith(("Left-", "ctx-lh-")):
        return "L"
    if name.startswith(("Right-", "ctx-rh-")):
        return "R"
    return None


def decode_label(value: int) -> tuple[str, str, str]:
    """``(mars_category, mars_region, hemisphere)`` of a map value.

    >>> decode_label(101), decode_label(12), decode_label(200)
    (('lobar', 'frontal', 'R'), ('infratentorial', 'brainstem', 'L'), ('non-parenchyma', 'csf', 'n/a'))
    """
    value = int(value)
    if value == CSF_LABEL:
        return "non-parenchyma", "csf", "n/a"
    if value == OUTSIDE_LABEL:
        return "non-parenchyma", "outside_brain", "n/a"
    hemi = "R" if value > RIGHT_OFFSET else "L"
    region = REGIONS[value - (RIGHT_OFFSET if hemi == "R" else 0) - 1]
    return CATEGORY[region], region, hemi


def label_table() -> pd.DataFrame:
    """BIDS dseg lookup table: ``index, name, mars_category, mars_region, hemisphere``."""
    rows = [(OUTSIDE_LABEL, "outside_brain", "non-parenchyma", "outside_brain", "n/a")]
    for offset, hemi in ((0, "L"), (RIGHT_OFFSET, "R")):
        for region in REGIONS:
            rows.append((CODE[region] + offset, f"{hemi}_{region}", CATEGORY[region], region, hemi))
    rows.append((CSF_LABEL, "csf", "non-parenchyma", "csf", "n/a"))
    return pd.DataFrame(rows, columns=["index", "name", "mars_category", "mars_region", "hemisphere"])


@dataclass(frozen=True)
class MarsMap:
    labels: np.ndarray  # int16 MARS label per voxel
    affine: np.ndarray


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels, as slices."""
    nz = np.nonzero(mask)
    return tuple(
        slice(max(int(a.min()) - margin, 0), min(int(a.max()) + margin + 1, n)) for a, n in zip(nz, mask.shape)
    )


def build_mars_map(mni: MNIResources, juxtacortical_mm: float = 5.0, capsule_mm: float = 6.0) -> MarsMap:
    """Rasterize MARS regions on the grid of ``mni``.

    Parameters
    ----------
    mni : MNIResources
        Packaged template and Desikan-Killiany labels (:func:`cmb.template.load_mni`).
    juxtacortical_mm : float
        White matter within this distance of a lobe's cortex belongs to that lobe.
    capsule_mm : float
        Reach of the internal capsule from the lentiform nucleus and from the
        caudate/thalamus; the external capsule is half as thick.
    """
    zooms = mni.zooms
    dk = mni.dk
    region = np.full(dk.shape, "", dtype=object)
    hemi_of_label = {}
    lut_region = {}
    for value, name in mni.dk_names.items():
        lut_region[value] = _region_of_dk(name)
        hemi_of_label[value] = _hemisphere_of_dk(name)

    code = np.zeros(dk.shape, dtype=np.int16)
    present = np.unique(dk)
    masks = {}
    for value in present:
        r = lut_region.get(int(value))
        if r is None:
            continue
        masks.setdefault(r, np.zeros(dk.shape, dtype=bool))
        masks[r] |= dk == value

    cerebral_wm = np.isin(dk, [v for v, n in mni.dk_names.items() if n.endswith("Cerebral-White-Matter")])
    # Voxels the atlas leaves unlabelled inside the brain: tissue if the priors say so.
    unlabelled_tissue = (dk == 0) & mni.brain & ((mni.gm + mni.wm) > 0.5)

    csf = masks.pop("csf", np.zeros(dk.shape, dtype=bool)) | ((dk == 0) & mni.brain & ~unlabelled_tissue)
    for r, m in masks.items():
        code[m] = CODE[r]

    # Lobar white matter: nearest cortical lobe within the juxtacortical distance.
    cortex = np.isin(code, [CODE[r] for r in REGIONS[:5]]) & ~cerebral_wm
    fill = (cerebral_wm | unlabelled_tissue) & (code == 0)
    box = _bbox(mni.brain, margin=2)
    dist = np.full(dk.shape, np.inf, dtype=np.float32)
    nearest_lobe = np.zeros(dk.shape, dtype=np.int16)
    d_box, idx = ndi.distance_transform_edt(~cortex[box], sampling=zooms, return_indices=True)
    dist[box] = d_box
    nearest_lobe[box] = code[box][tuple(idx)]

    # Capsules, from the geometry of the deep grey nuclei.
    names = mni.dk_names
    lentiform = np.isin(dk, [v for v, n in names.items() if n.endswith(("Putamen", "Pallidum"))])
    putamen = np.isin(dk, [v for v, n in names.items() if n.endswith("Putamen")])
    medial = np.isin(dk, [v for v, n in names.items() if n.endswith(("Caudate", "Thalamus-Proper", "Thalamus"))])
    x_mm = (mni.affine[0, :3] @ np.indices(dk.shape).reshape(3, -1) + mni.affine[0, 3]).reshape(dk.shape)
    deep = _bbox(lentiform | medial, margin=int(np.ceil(2 * capsule_mm / zooms.min())) + 1)
    d_lent = ndi.distance_transform_edt(~lentiform[deep], sampling=zooms)
    d_med = ndi.distance_transform_edt(~medial[deep], sampling=zooms)
    d_put, put_idx = ndi.distance_transform_edt(~putamen[deep], sampling=zooms, return_indices=True)
    internal = np.zeros(dk.shape, dtype=bool)
    external = np.zeros(dk.shape, dtype=bool)
    internal[deep] = fill[deep] & (d_lent <= capsule_mm) & (d_med <= capsule_mm)
    lateral_to_putamen = np.abs(x_mm[deep]) > np.abs(x_mm[deep][tuple(put_idx)])
    external[deep] = fill[deep] & ~internal[deep] & (d_put <= capsule_mm / 2) & lateral_to_putamen

    code[internal] = CODE["internal_capsule"]
    code[external] = CODE["external_capsule"]
    rest = fill & ~internal & ~external
    juxta = rest & (dist <= juxtacortical_mm) & (nearest_lobe > 0)
    code[juxta] = nearest_lobe[juxta]
    code[rest & ~juxta] = CODE["deep_wm"]

    # Hemisphere: from the atlas label where it has one, else the sign of MNI x.
    right = x_mm > 0
    for value in present:
        h = hemi_of_label.get(int(value))
        if h is not None:
            right[dk == value] = h == "R"
    labels = np.where(code > 0, code + right * RIGHT_OFFSET, 0).astype(np.int16)
    labels[csf & (code == 0)] = CSF_LABEL
    labels[~mni.brain & (code == 0)] = OUTSIDE_LABEL
    return MarsMap(labels=labels, affine=mni.affine)
