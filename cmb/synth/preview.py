"""Preview mosaic of a synthetic subject: axial and coronal slices with CMBs and mimics marked."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cmb.atomic import atomic_path
from cmb.synth.bids_writer import TRUTH_PIPELINE
from cmb.synth.physics import homodyne_phase

__all__ = ["write_preview"]

_COLORS = {"cmb": "red", "vein": "deepskyblue", "calcification": "lime"}


def _pick_subject(root: Path) -> Path:
    """Truth params of the subject with the most CMBs (ties: first)."""
    best, best_n = None, -1
    for params in sorted((root / "derivatives" / TRUTH_PIPELINE).rglob("*_synth.json")):
        table = params.with_name(params.name.replace("_synth.json", "_label-CMB_dseg.tsv"))
        n = len(pd.read_csv(table, sep="\t"))
        if n > best_n:
            best, best_n = params, n
    if best is None:
        raise FileNotFoundError(f"no synthetic subject under {root}")
    return best


def write_preview(root: Path, out: Path | None = None, n_cols: int = 4) -> Path:
    """Draw axial and coronal slices through the CMBs of one subject of a synthetic cohort."""
    # lazy: matplotlib.pyplot takes ~0.5 s to import (and sets the backend); only --preview draws
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    params_path = _pick_subject(root)
    params = json.loads(params_path.read_text())
    images = params["images"]
    mag_rel = images.get("mag") or images.get("mag1")
    mag_img = nib.as_closest_canonical(nib.load(root / mag_rel))
    mag = mag_img.get_fdata(dtype=np.float32)
    phase_rel = images.get("phase") or images.get("phase1")
    hp = None
    if phase_rel:
        ph_img = nib.as_closest_canonical(nib.load(root / phase_rel))
        ph = ph_img.get_fdata(dtype=np.float32)
        if params["phase_units"] == "int12":
            ph = ph / 4096 * np.pi
        elif params["phase_units"] == "deg":
            ph = np.radians(ph)
        hp = homodyne_phase(mag * np.exp(1j * ph), mag_img.header.get_zooms()[:3])
        if params["paramagnetic_phase"] == "negative":
            hp = -hp
    inv = np.linalg.inv(mag_img.affine)
    prefix = params_path.name.replace("_synth.json", "")
    cmbs = pd.read_csv(params_path.with_name(f"{prefix}_label-CMB_dseg.tsv"), sep="\t")
    mimics = pd.read_csv(params_path.with_name(f"{prefix}_mimics.tsv"), sep="\t")
    points = [("cmb", r.x_mm, r.y_mm, r.z_mm) for r in cmbs.itertuples()]
    points += [
        ("vein" if t.startswith("vein") else "calcification", x, y, z)
        for t, x, y, z in zip(mimics.type, mimics.x_mm, mimics.y_mm, mimics.z_mm)
        if not t.startswith("air")
    ]
    vox = {i: inv[:3, :3] @ np.array(p[1:]) + inv[:3, 3] for i, p in enumerate(points)}

    targets = [vox[i] for i, p in enumerate(points) if p[0] == "cmb"][:n_cols]
    calc = [vox[i] for i, p in enumerate(points) if p[0] == "calcification"]
    while len(targets) < n_cols:
        targets.append(calc.pop(0) if calc else np.array(mag.shape) / 2 + [0, 0, 4 * len(targets)])
    rows = 3 if hp is not None else 2
    fig, axes = plt.subplots(rows, n_cols, figsize=(3.2 * n_cols, 3.4 * rows), facecolor="black")
    vmax = np.percentile(mag, 99.5)
    zooms = mag_img.header.get_zooms()[:3]
    for c, t in enumerate(targets):
        k, j = int(round(t[2])), int(round(t[1]))
        k = int(np.clip(k, 0, mag.shape[2] - 1))
        j = int(np.clip(j, 0, mag.shape[1] - 1))
        panels = [("axial", mag[:, :, k].T, k, 2), ("coronal", mag[:, j, :].T, j, 1)]
        if hp is not None:
            panels.append(("axial HP phase", hp[:, :, k].T, k, 2))
        for r, (name, sl, idx, axis) in enumerate(panels):
            ax = axes[r, c]
            is_phase = "phase" in name
            aspect = (zooms[2] / zooms[0]) if axis == 1 else zooms[1] / zooms[0]
            ax.imshow(
                sl,
                cmap="gray",
                origin="lower",
                vmin=-1 if is_phase else 0,
                vmax=1 if is_phase else vmax,
                aspect=aspect,
            )
            for i, p in enumerate(points):
                v = vox[i]
                if abs(v[axis] - idx) <= 0.5 + (1.0 if axis == 1 else 0):
                    xy = (v[0], v[2]) if axis == 1 else (v[0], v[1])
                    ax.scatter(
                        *xy, s=140, facecolors="none", edgecolors=_COLORS[p[0]], linewidths=1.2
                    )
            ax.set_title(f"{name} {idx}", color="white", fontsize=9)
            ax.axis("off")
    handles = [
        plt.Line2D([], [], marker="o", ls="", mfc="none", mec=col, label=k)
        for k, col in _COLORS.items()
    ]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=3,
        facecolor="black",
        labelcolor="white",
        frameon=False,
    )
    fig.suptitle(
        f"{prefix}: {params['preset']} {params['field_strength']} T, TE "
        f"{1000 * params['echo_times'][0]:.0f} ms, {len(cmbs)} CMBs",
        color="white",
    )
    out = Path(out) if out else root / "derivatives" / TRUTH_PIPELINE / "preview.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=80, facecolor="black", format="png")
    plt.close(fig)
    return out
