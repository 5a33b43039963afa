"""QC figures (reportlets) of preprocessing and registration. Drawing code only.

- :func:`plot_registration`: region edges of a native-space atlas (the warped
  MNI MARS map) over the subject image, in three planes;
- :func:`plot_brain_mask`: the brain mask outline and fill over the image.

Images are expected in RAS voxel order (as :mod:`cmb.preprocess` writes them);
pixel aspect ratios follow the voxel size, so anisotropic voxels look right.
The format follows the file suffix (``.png``, ``.svg``, ...). Matplotlib's
object API is used (no pyplot state), so this is safe in any process.

Command line::

    python -m cmb.qc_figures registration --image preproc.nii.gz --dseg mars_dseg.nii.gz --out reg.svg
    python -m cmb.qc_figures mask --image preproc.nii.gz --mask brain_mask.nii.gz --out mask.svg
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import matplotlib
import nibabel as nib
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from skimage.segmentation import find_boundaries

from cmb.atomic import atomic_path

__all__ = ["orthogonal_slices", "plot_registration", "plot_brain_mask", "main"]

_PLANES = ("sagittal", "coronal", "axial")  # slice axis 0, 1, 2 of a RAS volume


def _load(img) -> nib.Nifti1Image:
    return img if isinstance(img, nib.Nifti1Image) else nib.load(img)


def _zooms(img: nib.Nifti1Image) -> np.ndarray:
    return np.sqrt((img.affine[:3, :3] ** 2).sum(0))


def orthogonal_slices(shape: Sequence[int], mask: np.ndarray | None = None) -> tuple[int, int, int]:
    """Slice indices through the centre of ``mask`` (or of the volume).

    >>> m = np.zeros((10, 10, 10), bool); m[2:4, 6:8, 1:3] = True
    >>> orthogonal_slices(m.shape, m), orthogonal_slices((10, 20, 5))
    ((2, 6, 1), (5, 10, 2))
    """
    if mask is not None and np.any(mask):
        return tuple(int(c) for c in np.round(np.argwhere(mask).mean(0) - 0.5).astype(int))
    return tuple(int(s) // 2 for s in shape)


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """2-D slice oriented for display (rows: superior/anterior up after ``origin='lower'``)."""
    return np.take(volume, index, axis=axis).T


def _aspect(zooms: np.ndarray, axis: int) -> float:
    rest = [a for a in range(3) if a != axis]
    return float(zooms[rest[1]] / zooms[rest[0]])


def _window(data: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    values = data[mask] if mask is not None and mask.any() else data[data > 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [1, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def _save(fig: Figure, out) -> None:
    matplotlib.rcParams["svg.hashsalt"] = (
        "cmb"  # stable SVG ids: the same figure gives the same bytes
    )
    with atomic_path(out) as tmp:
        fmt = str(out).rsplit(".", 1)[-1]
        # no date in an SVG: a rerun (or the same run in the container) writes the same bytes
        fig.savefig(
            tmp,
            format=fmt,
            dpi=100,
            facecolor="black",
            metadata={"Date": None} if fmt == "svg" else None,
        )


def plot_registration(
    image,
    dseg,
    out: str | os.PathLike,
    *,
    title: str | None = None,
    slices: Sequence[int] | None = None,
) -> None:
    """Atlas region edges over the subject image, in three orthogonal planes.

    Parameters
    ----------
    image : path or nibabel image
        The subject image (e.g. preprocessed SWI), RAS.
    dseg : path or nibabel image
        Integer labels on the same grid (e.g. the native MARS dseg).
    out : path
        Figure file; the format follows the suffix.
    title : str, optional
    slices : sequence of 3 int, optional
        Sagittal, coronal, axial slice indices (default: centre of the labels).
    """
    img, lab = _load(image), _load(dseg)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    labels = np.asanyarray(lab.dataobj).astype(np.int32)
    if labels.shape != data.shape:
        raise ValueError(f"label grid {labels.shape} differs from image grid {data.shape}")
    zooms = _zooms(img)
    idx = orthogonal_slices(data.shape, labels > 0) if slices is None else tuple(slices)
    vmin, vmax = _window(data, labels > 0)
    fig = Figure(figsize=(12, 4.4))
    axes = fig.subplots(1, 3)
    edge_cmap = ListedColormap(["#ffd700"])
    for ax, axis, name in zip(axes, range(3), _PLANES):
        sl = _plane(data, axis, idx[axis])
        edges = find_boundaries(_plane(labels, axis, idx[axis]), mode="inner")
        ax.imshow(
            sl,
            cmap="gray",
            vmin=vmin,
            vmax=vmax,
            origin="lower",
            aspect=_aspect(zooms, axis),
            interpolation="nearest",
        )
        ax.imshow(
            np.ma.masked_where(~edges, edges),
            cmap=edge_cmap,
            origin="lower",
            aspect=_aspect(zooms, axis),
            interpolation="nearest",
            alpha=0.9,
        )
        ax.set_title(f"{name} {idx[axis]}", color="white", fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, color="white")
    fig.tight_layout()
    _save(fig, out)


def plot_brain_mask(
    image, mask, out: str | os.PathLike, *, title: str | None = None, n_axial: int = 5
) -> None:
    """Brain mask over the image: ``n_axial`` axial slices plus coronal and sagittal.

    The mask is drawn as a red outline with a faint fill, so both cut-off cortex
    (outline inside the brain) and leaks into the scalp are visible.
    """
    img, msk = _load(image), _load(mask)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    m = np.asanyarray(msk.dataobj) > 0
    if m.shape != data.shape:
        raise ValueError(f"mask grid {m.shape} differs from image grid {data.shape}")
    zooms = _zooms(img)
    centre = orthogonal_slices(data.shape, m)
    zs = np.flatnonzero(m.any(axis=(0, 1)))
    axial = (
        np.linspace(zs[0], zs[-1], n_axial + 2)[1:-1].round().astype(int)
        if zs.size
        else np.linspace(0, data.shape[2] - 1, n_axial).round().astype(int)
    )
    views = [(2, int(k)) for k in axial] + [(1, centre[1]), (0, centre[0])]
    vmin, vmax = _window(data, m)
    fig = Figure(figsize=(2.4 * len(views), 3.0))
    axes = fig.subplots(1, len(views))
    red = ListedColormap(["#ff3030"])
    for ax, (axis, k) in zip(axes, views):
        sl = _plane(data, axis, k)
        mk = _plane(m, axis, k)
        edge = find_boundaries(mk, mode="inner")
        asp = _aspect(zooms, axis)
        ax.imshow(
            sl,
            cmap="gray",
            vmin=vmin,
            vmax=vmax,
            origin="lower",
            aspect=asp,
            interpolation="nearest",
        )
        ax.imshow(
            np.ma.masked_where(~mk, mk),
            cmap=red,
            origin="lower",
            aspect=asp,
            alpha=0.15,
            interpolation="nearest",
        )
        ax.imshow(
            np.ma.masked_where(~edge, edge),
            cmap=red,
            origin="lower",
            aspect=asp,
            interpolation="nearest",
        )
        ax.set_title(f"{_PLANES[axis]} {k}", color="white", fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, color="white")
    fig.tight_layout()
    _save(fig, out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cmb.qc_figures", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("registration", help="atlas edges over the subject, 3 planes")
    r.add_argument("--image", required=True)
    r.add_argument("--dseg", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--title")
    m = sub.add_parser("mask", help="brain mask over the image")
    m.add_argument("--image", required=True)
    m.add_argument("--mask", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--title")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "registration":
        plot_registration(args.image, args.dseg, args.out, title=args.title)
    else:
        plot_brain_mask(args.image, args.mask, args.out, title=args.title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
