"""Report figures (reportlets): drawing only, no HTML.

Per-detection triplets and the registration flicker frames are drawn with numpy and
Pillow straight from the voxels (a few milliseconds each, so a subject with dozens of
candidates still renders in seconds); cohort charts use matplotlib's object API (no
pyplot state) and return SVG text. Every function returns bytes or text ready to be
inlined (:func:`data_uri`): the pages never reference a file or a URL.

Volumes are expected in RAS voxel order (the preprocessed grid); display rows run
superior/anterior up, and pixel sizes follow the voxel sizes, so anisotropic voxels
look right.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

__all__ = [
    "data_uri",
    "intensity_window",
    "triplet_png",
    "image_size",
    "flicker_frames",
    "overlay_png",
    "count_histogram_svg",
    "region_bars_svg",
    "site_boxplot_svg",
]

_PLANES = ("axial", "coronal", "sagittal")
_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


def data_uri(payload: bytes | str, mime: str) -> str:
    """``data:`` URI of ``payload`` (base64).

    >>> data_uri(b"<svg/>", "image/svg+xml")
    'data:image/svg+xml;base64,PHN2Zy8+'
    """
    raw = payload.encode("utf-8") if isinstance(payload, str) else payload
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


def intensity_window(
    data: np.ndarray, mask: np.ndarray | None = None, pct=(1.0, 99.5)
) -> tuple[float, float]:
    """Display window: percentiles of ``data`` inside ``mask`` (or over positive voxels).

    >>> intensity_window(np.arange(100.0), pct=(0, 100))
    (1.0, 99.0)
    """
    if data.size > 2_000_000:  # a fixed subsample of the grid: same window on every run, 10x faster
        step = (2, 2, 1) if data.ndim == 3 else 2
        data = (
            data[tuple(slice(None, None, k) for k in step)]
            if data.ndim == 3
            else data.ravel()[::step]
        )
        mask = (
            None if mask is None else (mask[::2, ::2, :] if mask.ndim == 3 else mask.ravel()[::2])
        )
    values = data[mask] if mask is not None and mask.any() else data[data > 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, pct)
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _zooms(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((affine[:3, :3] ** 2).sum(0))


def _to_uint8(a: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return (np.clip((a - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A 2-D view (no copy, unlike ``np.take``) of ``volume`` at ``index`` along ``axis``."""
    return volume[tuple(index if a == axis else slice(None) for a in range(3))]


def _panel(
    volume: np.ndarray, zooms: np.ndarray, centre: Sequence[int], plane: str, half_mm: float
):
    """2-D crop around ``centre`` (rows superior/anterior first) and its pixel sizes (mm)."""
    axis = _AXIS[plane]
    rest = [a for a in range(3) if a != axis]
    sl = _slice(volume, axis, int(np.clip(centre[axis], 0, volume.shape[axis] - 1)))
    # columns: first remaining axis; rows: second, flipped so that superior/anterior is up
    spans = []
    for a in rest:
        h = max(int(round(half_mm / zooms[a])), 1)
        spans.append((int(centre[a]) - h, int(centre[a]) + h + 1))
    out = np.zeros((spans[0][1] - spans[0][0], spans[1][1] - spans[1][0]), dtype=np.float32)
    src = [(max(s, 0), min(e, volume.shape[a])) for (s, e), a in zip(spans, rest)]
    if src[0][1] > src[0][0] and src[1][1] > src[1][0]:
        out[
            src[0][0] - spans[0][0] : src[0][1] - spans[0][0],
            src[1][0] - spans[1][0] : src[1][1] - spans[1][0],
        ] = sl[src[0][0] : src[0][1], src[1][0] : src[1][1]]
    return out.T[::-1], (float(zooms[rest[0]]), float(zooms[rest[1]]))


def _render(
    crop: np.ndarray,
    pix_mm: tuple[float, float],
    window,
    px_per_mm: float,
    marker_mm: float | None,
    colour=(255, 48, 48),
) -> Image.Image:
    img = Image.fromarray(_to_uint8(crop, window), mode="L").convert("RGB")
    w = max(int(round(crop.shape[1] * pix_mm[0] * px_per_mm)), 1)
    h = max(int(round(crop.shape[0] * pix_mm[1] * px_per_mm)), 1)
    img = img.resize((w, h), Image.Resampling.BILINEAR)
    if marker_mm is not None:
        d = ImageDraw.Draw(img)
        r = marker_mm * px_per_mm
        cx, cy = w / 2, h / 2
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=2)
    return img


def triplet_png(
    volumes: Sequence[np.ndarray],
    windows: Sequence[tuple[float, float]],
    affine: np.ndarray,
    centre: Sequence[int],
    *,
    marker_mm: float = 4.0,
    half_mm: float = 16.0,
    px_per_mm: float = 4.0,
    fmt: str = "PNG",
) -> bytes:
    """Image (PNG, or JPEG with ``fmt="JPEG"``: 8x faster to encode) of axial, coronal
    and sagittal crops around ``centre``, one row per volume (magnitude, then phase),
    with a circle of radius ``marker_mm`` on the centre.

    >>> vol = np.random.default_rng(0).random((40, 40, 20)).astype(np.float32)
    >>> png = triplet_png([vol], [(0, 1)], np.diag([1.0, 1.0, 2.0, 1.0]), (20, 20, 10))
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n", image_size(png)
    (True, (404, 136))
    """
    zooms = _zooms(affine)
    rows = []
    for vol, win in zip(volumes, windows):
        tiles = [
            _render(*_panel(vol, zooms, centre, p, half_mm), win, px_per_mm, marker_mm)
            for p in _PLANES
        ]
        rows.append(tiles)
    gap = 4
    width = max(sum(t.width for t in r) + gap * (len(r) - 1) for r in rows)
    height = sum(max(t.height for t in r) for r in rows) + gap * (len(rows) - 1)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    y = 0
    for r in rows:
        x = 0
        for t in r:
            canvas.paste(t, (x, y))
            x += t.width + gap
        y += max(t.height for t in r) + gap
    buf = io.BytesIO()
    if fmt.upper() == "JPEG":
        canvas.save(buf, format="JPEG", quality=90)
    else:
        canvas.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def image_size(payload: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image (reads the header only)."""
    with Image.open(io.BytesIO(payload)) as im:
        return im.size


def _label_colours(labels: np.ndarray) -> np.ndarray:
    """A fixed colour per label value (0 transparent-black)."""
    rng = np.random.default_rng(12345)
    lut = rng.integers(60, 256, size=(int(labels.max()) + 1 if labels.size else 1, 3)).astype(
        np.uint8
    )
    lut[0] = 0
    return lut[np.clip(labels, 0, None)]


def _mid_panels(volume, zooms, centre, is_label=False):
    out = []
    for p in _PLANES:
        axis = _AXIS[p]
        rest = [a for a in range(3) if a != axis]
        sl = _slice(volume, axis, int(centre[axis])).T[::-1]
        out.append((sl, (float(zooms[rest[0]]), float(zooms[rest[1]]))))
    return out


def flicker_frames(
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    window,
    *,
    centre: Sequence[int] | None = None,
    height_px: int = 220,
    alpha: float = 0.55,
) -> tuple[bytes, bytes]:
    """Two PNGs of the same three planes: the subject image, and the atlas labels in
    colour over it. Shown alternately they reveal any misregistration.
    """
    zooms = _zooms(affine)
    if centre is None:
        nz = np.argwhere(labels[::4, ::4, ::2] > 0) * [
            4,
            4,
            2,
        ]  # subsampled: the centre need not be exact
        centre = np.rint(nz.mean(0)).astype(int) if len(nz) else np.array(image.shape) // 2
    frames = []
    for overlay in (False, True):
        tiles = []
        for (sl, pix), (lab, _) in zip(
            _mid_panels(image, zooms, centre), _mid_panels(labels, zooms, centre)
        ):
            grey = np.repeat(_to_uint8(sl, window)[..., None], 3, axis=2).astype(np.float32)
            if overlay:
                col = _label_colours(lab.astype(np.int64)).astype(np.float32)
                m = (lab > 0)[..., None]
                grey = np.where(m, (1 - alpha) * grey + alpha * col, grey)
            img = Image.fromarray(grey.astype(np.uint8), mode="RGB")
            scale = height_px / (sl.shape[0] * pix[1])
            img = img.resize(
                (max(int(round(sl.shape[1] * pix[0] * scale)), 1), height_px),
                Image.Resampling.NEAREST,
            )
            tiles.append(img)
        frames.append(_tiles_png(tiles, height_px, extra=8))
    return frames[0], frames[1]


def _tiles_png(tiles, height_px: int, extra: int) -> bytes:
    """PNG of image tiles side by side, 4 px apart, on black (``extra`` px of canvas beyond the tiles)."""
    canvas = Image.new("RGB", (sum(t.width for t in tiles) + extra, height_px), (0, 0, 0))
    x = 0
    for t in tiles:
        canvas.paste(t, (x, 0))
        x += t.width + 4
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def overlay_png(
    image: np.ndarray, mask: np.ndarray, affine: np.ndarray, window, *, height_px: int = 200
) -> bytes:
    """Brain-mask outline (red) over the image: 5 axial planes plus coronal and sagittal."""
    zooms = _zooms(affine)
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    ks = (
        np.linspace(zs[0], zs[-1], 7)[1:-1].round().astype(int)
        if zs.size
        else [image.shape[2] // 2]
    )
    nz = np.argwhere(mask[::4, ::4, ::2]) * [4, 4, 2]
    c = np.rint(nz.mean(0)).astype(int) if len(nz) else np.array(image.shape) // 2
    views = [(2, k) for k in ks] + [(1, c[1]), (0, c[0])]
    tiles = []
    for axis, k in views:
        rest = [a for a in range(3) if a != axis]
        sl = _slice(image, axis, int(k)).T[::-1]
        mk = _slice(mask, axis, int(k)).T[::-1]
        ed = mk & ~ndi.binary_erosion(mk)  # outline of this plane only
        rgb = np.repeat(_to_uint8(sl, window)[..., None], 3, axis=2)
        rgb[ed] = (255, 48, 48)
        img = Image.fromarray(rgb, mode="RGB")
        pix = (zooms[rest[0]], zooms[rest[1]])
        scale = height_px / (sl.shape[0] * pix[1])
        tiles.append(
            img.resize(
                (max(int(round(sl.shape[1] * pix[0] * scale)), 1), height_px),
                Image.Resampling.NEAREST,
            )
        )
    return _tiles_png(tiles, height_px, extra=4 * len(tiles))


# --------------------------------------------------------------------------- cohort charts


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _figure(w: float, h: float):
    # lazy: matplotlib takes ~1 s to import; only the cohort page's charts need it
    import matplotlib

    matplotlib.rcParams["svg.hashsalt"] = "cmb"  # stable ids: identical SVG on a rerun
    matplotlib.rcParams["svg.fonttype"] = "none"
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def count_histogram_svg(counts: Sequence[int], title: str = "CMBs per scan") -> str:
    """Bar chart of the number of scans per CMB count (10+ pooled per bin above 10)."""
    counts = np.asarray([int(c) for c in counts], dtype=int)
    fig = _figure(6.4, 3.2)
    ax = fig.subplots()
    if counts.size:
        edges = list(range(0, 11)) + [11, 21, 51, max(52, counts.max() + 2)]
        labels = [str(i) for i in range(0, 11)] + ["11-20", "21-50", "51+"]
        hist = [
            int(((counts >= lo) & (counts < hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:])
        ]
        ax.bar(range(len(hist)), hist, color="#3b6ea8")
        ax.set_xticks(range(len(hist)), labels, rotation=45, fontsize=8)
        for x, v in enumerate(hist):
            if v:
                ax.text(x, v, str(v), ha="center", va="bottom", fontsize=7)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("CMBs per scan")
    ax.set_ylabel("scans")
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _svg(fig)


def region_bars_svg(left: dict[str, int], right: dict[str, int], categories: dict[str, str]) -> str:
    """Horizontal bars of CMB counts per MARS region, left and right, grouped by category."""
    regions = list(left)
    fig = _figure(6.4, 0.32 * len(regions) + 1.2)
    ax = fig.subplots()
    y = np.arange(len(regions))[::-1]
    lv = np.array([left[r] for r in regions])
    rv = np.array([right[r] for r in regions])
    ax.barh(y + 0.2, lv, height=0.4, color="#3b6ea8", label="left")
    ax.barh(y - 0.2, rv, height=0.4, color="#d0743c", label="right")
    ax.set_yticks(y, [f"{r.replace('_', ' ')} ({categories[r][:5]})" for r in regions], fontsize=8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("CMBs (cohort total)")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _svg(fig)


def site_boxplot_svg(groups: dict[str, Sequence[float]], title: str) -> str:
    """Box plot of CMB counts per site or scanner."""
    names = list(groups)
    fig = _figure(6.4, 0.35 * len(names) + 1.3)
    ax = fig.subplots()
    ax.boxplot(
        [np.asarray(groups[n], float) for n in names],
        orientation="horizontal",
        tick_labels=names,
        widths=0.6,
    )
    ax.set_xlabel("CMBs per scan")
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _svg(fig)
