"""The subject page's volume viewer: NiiVue (vendored) and the layers it shows.

NiiVue (``cmb/report/vendor/niivue``, a pinned build of the npm package
``@niivue/niivue``) is written once per output folder, to
``<output_dir>/viewer/niivue.umd.js`` (:func:`install_viewer`); every subject page
loads it from there with a relative ``<script src>``, so the page needs no network.

A page opened from disk (``file://``) cannot fetch NIfTI files, so the layers are
embedded in the page, as gzipped NIfTI in base64, within a size budget per subject
(:data:`EMBED_BUDGET_BYTES`, about 6 MB of page): the magnitude and the minIP slab
(cropped to the brain's bounding box, 8-bit), the candidates coloured by status, the
phase (8-bit) and the T1w (8-bit, at most 2 mm voxels). A layer that does not fit is
not embedded; the page then reads the full-resolution file by its relative path,
which works when the derivatives folder is served by ``cmb review DERIVATIVES``
(:mod:`cmb.review_server`).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import shutil
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from cmb.atomic import atomic_path

__all__ = [
    "NIIVUE_VERSION",
    "NIIVUE_SHA256",
    "VIEWER_FILES",
    "EMBED_BUDGET_BYTES",
    "MINIP_SLAB_MM",
    "STATUS_CODES",
    "install_viewer",
    "viewer_script",
    "viewer_layers",
]

NIIVUE_VERSION = "0.69.0"
NIIVUE_SHA256 = "47b896b77ec4a5be3ef1949c33ad393b6f45629921f326c279000bcf51bdb4af"
#: Files written next to each other in ``<output_dir>/viewer/``.
VIEWER_FILES = ("niivue.umd.js", "LICENSE", "README.md")
#: Largest total of embedded layers per subject page (base64 bytes).
EMBED_BUDGET_BYTES = 6_000_000
#: Thickness of the minimum-intensity projection slab (axial, mm).
MINIP_SLAB_MM = 8.0
#: Values of the candidate overlay: the candidate's status in the detections table.
STATUS_CODES = {"detected": 1, "rejected": 2, "below_threshold": 3}
_MARGIN_VOXELS = 4
_T1W_MAX_MM = 2.0


def _vendor():
    return resources.files("cmb.report").joinpath("vendor", "niivue")


def viewer_script(output_dir) -> Path:
    """Where :func:`install_viewer` puts NiiVue in an output folder."""
    return Path(output_dir) / "viewer" / "niivue.umd.js"


def install_viewer(folder) -> Path:
    """Copy the vendored NiiVue (script, licence, README) into ``folder``; returns the script's path.

    The script's checksum is checked against :data:`NIIVUE_SHA256` first.
    """
    folder = Path(folder)
    script = _vendor().joinpath("niivue.umd.js").read_bytes()
    digest = hashlib.sha256(script).hexdigest()
    if digest != NIIVUE_SHA256:
        raise RuntimeError(
            f"vendored niivue.umd.js has sha256 {digest}, expected {NIIVUE_SHA256} (NiiVue "
            f"{NIIVUE_VERSION}): the package is damaged"
        )
    for name in VIEWER_FILES:
        with (
            atomic_path(folder / name) as tmp,
            _vendor().joinpath(name).open("rb") as src,
            open(tmp, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
    return folder / "niivue.umd.js"


def _nifti_b64(data: np.ndarray, affine: np.ndarray) -> str:
    img = nib.Nifti1Image(np.asfortranarray(data), affine)
    img.header.set_xyzt_units("mm")
    img.header.set_sform(affine, code=1)
    img.header.set_qform(affine, code=1)
    return base64.b64encode(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)).decode("ascii")


def _to_uint8(vol: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scale = 255.0 / (hi - lo) if hi > lo else 1.0
    return np.clip(np.rint((vol - lo) * scale), 0, 255).astype(np.uint8)


def _crop(mask: np.ndarray | None, shape) -> tuple[slice, ...]:
    if mask is None or not mask.any():
        return tuple(slice(0, s) for s in shape)
    box = ndi.find_objects(mask.astype(np.uint8))[0]
    return tuple(
        slice(max(b.start - _MARGIN_VOXELS, 0), min(b.stop + _MARGIN_VOXELS, s))
        for b, s in zip(box, shape)
    )


def _shifted(affine: np.ndarray, start) -> np.ndarray:
    out = affine.copy()
    out[:3, 3] = nib.affines.apply_affine(affine, start)
    return out


def _status_map(shape, affine, det: pd.DataFrame | None, dseg) -> np.ndarray:
    """Candidate voxels coloured by status (:data:`STATUS_CODES`); spheres at the centres without a dseg."""
    out = np.zeros(shape, np.uint8)
    if det is None or not len(det):
        return out
    code = np.where(
        det["is_cmb"] == "true",
        STATUS_CODES["detected"],
        np.where(
            det["rejected"] == "true", STATUS_CODES["rejected"], STATUS_CODES["below_threshold"]
        ),
    )
    ids = pd.to_numeric(det["cmb_id"], errors="coerce").fillna(0).astype(np.int64).to_numpy()
    if dseg is not None and dseg.shape == tuple(shape):
        lut = np.zeros(max(int(ids.max(initial=0)), int(dseg.max(initial=0))) + 1, np.uint8)
        lut[ids] = code
        return lut[np.clip(dseg, 0, lut.size - 1)]
    ijk = np.rint(
        nib.affines.apply_affine(
            np.linalg.inv(affine),
            det[["x_mm", "y_mm", "z_mm"]].apply(pd.to_numeric, errors="coerce").to_numpy(float),
        )
    ).astype(int)
    for c, v in zip(ijk, code):
        if np.all(c >= 1) and np.all(c < np.asarray(shape) - 1):
            out[c[0] - 1 : c[0] + 2, c[1] - 1 : c[1] + 2, c[2]] = v
    return out


def viewer_layers(
    page: Path,
    *,
    image=None,
    vol: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    window=(0.0, 1.0),
    phase=None,
    ph: np.ndarray | None = None,
    t1w=None,
    det: pd.DataFrame | None = None,
    candidates_dseg=None,
    budget_bytes: int = EMBED_BUDGET_BYTES,
) -> dict:
    """The viewer's layers of one subject page.

    Returns ``{"layers": [...], "embedded_bytes": int, "budget_bytes": int}``; each layer has
    ``id, label, kind`` (background, overlay, candidates), ``colormap``, ``cal_min``,
    ``cal_max``, ``opacity`` and either ``b64`` (embedded) or ``url`` (relative to the page,
    read when the folder is served by ``cmb review``).
    """
    layers: list[dict] = []
    if image is None or vol is None:
        return {"layers": [], "embedded_bytes": 0, "budget_bytes": budget_bytes}
    img = nib.load(image)
    affine = img.affine
    box = _crop(mask, vol.shape)
    start = [b.start for b in box]
    caff = _shifted(affine, start)
    used = 0

    def rel(path) -> str | None:
        if path is None:
            return None
        return Path(os.path.relpath(Path(path).resolve(), Path(page).resolve().parent)).as_posix()

    def add(layer: dict, make, url) -> None:
        nonlocal used
        b64 = make()
        if used + len(b64) <= budget_bytes:
            used += len(b64)
            layers.append({**layer, "b64": b64})
        elif url is not None:
            layers.append({**layer, "url": url})

    lo, hi = float(window[0]), float(window[1])
    mag8 = _to_uint8(vol[box], lo, hi)
    add(
        {
            "id": "magnitude",
            "label": "magnitude",
            "kind": "background",
            "colormap": "gray",
            "cal_min": 0,
            "cal_max": 255,
            "opacity": 1.0,
        },
        lambda: _nifti_b64(mag8, caff),
        rel(image),
    )
    dseg = None
    if (
        candidates_dseg is not None
        and Path(candidates_dseg).is_file()
        and Path(candidates_dseg).stat().st_size
    ):
        try:
            dseg = np.asanyarray(nib.load(candidates_dseg).dataobj).astype(np.int64)
        except Exception:  # noqa: BLE001 - a broken dseg: spheres at the centres instead
            dseg = None
    status = _status_map(vol.shape, affine, det, dseg)[box]
    add(
        {
            "id": "candidates",
            "label": "candidates",
            "kind": "candidates",
            "colormap": "",
            "cal_min": 0,
            "cal_max": 3,
            "opacity": 0.6,
        },
        lambda: _nifti_b64(status, caff),
        None,
    )
    n_slab = max(1, int(round(MINIP_SLAB_MM / float(img.header.get_zooms()[2]))))
    n_slab += 1 - n_slab % 2  # odd: centred on the slice
    add(
        {
            "id": "minip",
            "label": f"minIP slab ({n_slab * float(img.header.get_zooms()[2]):.1f} mm)",
            "kind": "background",
            "colormap": "gray",
            "cal_min": 0,
            "cal_max": 255,
            "opacity": 1.0,
        },
        lambda: _nifti_b64(ndi.minimum_filter1d(mag8, n_slab, axis=2, mode="nearest"), caff),
        None,
    )
    if ph is not None:
        lim = (
            float(
                np.percentile(
                    np.abs(ph[mask]) if mask is not None and mask.any() else np.abs(ph), 99
                )
            )
            or 1.0
        )
        add(
            {
                "id": "phase",
                "label": "phase",
                "kind": "overlay",
                "colormap": "gray",
                "cal_min": 0,
                "cal_max": 255,
                "opacity": 1.0,
            },
            lambda: _nifti_b64(_to_uint8(ph[box], -lim, lim), caff),
            rel(phase),
        )
    if t1w is not None and Path(t1w).is_file() and Path(t1w).stat().st_size:
        try:
            t_img = nib.load(t1w)
            t = np.asanyarray(t_img.dataobj).astype(np.float32)
        except Exception:  # noqa: BLE001 - a broken T1w is left out
            t = None
        if t is not None and t.ndim == 3:
            step = [
                max(1, int(np.floor(_T1W_MAX_MM / float(z) + 1e-6)))
                for z in t_img.header.get_zooms()[:3]
            ]
            small = t[:: step[0], :: step[1], :: step[2]]
            t_aff = t_img.affine @ np.diag([*step, 1.0])
            lo_t, hi_t = np.percentile(
                small[small > 0] if (small > 0).any() else small, (0.5, 99.5)
            )
            add(
                {
                    "id": "t1w",
                    "label": "T1w",
                    "kind": "overlay",
                    "colormap": "gray",
                    "cal_min": 0,
                    "cal_max": 255,
                    "opacity": 1.0,
                },
                lambda: _nifti_b64(_to_uint8(small, float(lo_t), float(hi_t)), t_aff),
                rel(t1w),
            )
    return {"layers": layers, "embedded_bytes": used, "budget_bytes": budget_bytes}
