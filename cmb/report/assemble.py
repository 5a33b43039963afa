"""Assemble the self-contained subject and cohort QC pages (Jinja templates in
``cmb/report/templates``, figures from :mod:`cmb.report.reportlets`).

Both pages are single HTML files: CSS and JavaScript inline, figures as ``data:``
URIs (PNG or SVG), no external URL. They open offline in any browser.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import jinja2
import nibabel as nib
import numpy as np
import pandas as pd

from cmb import __version__
from cmb.atomic import write_text
from cmb.cohort_tables import count_detections, stage_status
from cmb.failures import read_record
from cmb.localize import read_json_or_none
from cmb.mars_region import CATEGORY, REGIONS
from cmb.phase_convention import phase_convention_columns, read_phase_convention
from cmb.report.reportlets import (
    count_histogram_svg,
    data_uri,
    flicker_frames,
    image_size,
    intensity_window,
    overlay_png,
    region_bars_svg,
    site_boxplot_svg,
    triplet_png,
)
from cmb.report.viewer import EMBED_BUDGET_BYTES, viewer_layers
from cmb.tables import COUNT_COLUMNS
from cmb.verdicts import ATTACH_TOLERANCE_MM, REASONS

__all__ = ["render_subject_report", "render_cohort_report", "subject_report_link", "environment"]

_NA = "n/a"
#: Columns of the detections tables shown in the subject page.
TABLE_COLUMNS = [
    "cmb_id",
    "confidence",
    "mars_category",
    "mars_region",
    "hemisphere",
    "atlas_label",
    "x_mm",
    "y_mm",
    "z_mm",
    "i",
    "j",
    "k",
    "mni_x",
    "mni_y",
    "mni_z",
    "diameter_mm",
    "volume_mm3",
    "sphericity",
    "phase_sign",
    "phase_used",
    "vessel_length_mm",
    "vessel_elongation",
    "vessel_angle_b0_deg",
    "rejected_reason",
]
NUMERIC = {
    "cmb_id",
    "confidence",
    "x_mm",
    "y_mm",
    "z_mm",
    "i",
    "j",
    "k",
    "mni_x",
    "mni_y",
    "mni_z",
    "diameter_mm",
    "volume_mm3",
    "sphericity",
    "vessel_length_mm",
    "vessel_elongation",
    "vessel_angle_b0_deg",
}
TRIPLET_HALF_MM = 16.0
MAX_FIGURES = {"detections": 100, "rejected": 30, "below": 20}
#: Most rows shown per table (the most confident first); every row is in the TSV.
MAX_ROWS = {"detections": 500, "rejected": 200, "below": 100}


def environment():
    """The Jinja environment of the packaged templates (autoescaping on)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("cmb.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def subject_report_link(participant_id: str, session_id: str | None) -> str:
    """Path of a subject page relative to ``<output_dir>/cohort/``.

    >>> subject_report_link("sub-01", "ses-2"), subject_report_link("sub-01", "n/a")
    ('../sub-01/ses-2/sub-01_ses-2_report.html', '../sub-01/sub-01_report.html')
    """
    if session_id and session_id != _NA:
        return f"../{participant_id}/{session_id}/{participant_id}_{session_id}_report.html"
    return f"../{participant_id}/{participant_id}_report.html"


# --------------------------------------------------------------------------- subject


def _load(path):
    if path is None or not Path(path).is_file() or Path(path).stat().st_size == 0:
        return None
    try:
        return nib.load(path)
    except Exception:  # noqa: BLE001 - a broken upstream file is shown as missing
        return None


def _figure_uri(path) -> str | None:
    if path is None or not Path(path).is_file() or Path(path).stat().st_size == 0:
        return None
    suffix = Path(path).suffix.lower()
    mime = {".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg"}.get(suffix)
    return None if mime is None else data_uri(Path(path).read_bytes(), mime)


def _png_size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _threshold(value) -> str | None:
    """The operating threshold for display (4 significant digits).

    >>> _threshold(0.0045436799), _threshold(None), _threshold(0.5)
    ('0.004544', None, '0.5')
    """
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return None


def _flat(prefix: str, obj, out: list) -> None:
    if isinstance(obj, dict):
        for k in sorted(obj):
            _flat(f"{prefix}.{k}" if prefix else str(k), obj[k], out)
    elif isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        for n, v in enumerate(obj):
            _flat(f"{prefix}[{n}]", v, out)
    else:
        out.append(
            (
                prefix,
                _NA if obj is None else (json.dumps(obj) if isinstance(obj, list) else str(obj)),
            )
        )


def render_subject_report(
    *,
    participant_id: str,
    session_id: str | None,
    out: str | os.PathLike,
    detections=None,
    sidecar=None,
    image=None,
    phase=None,
    mask=None,
    mars=None,
    candidates_dseg=None,
    figure_brain_mask=None,
    figure_registration=None,
    records: Sequence = (),
    max_figures: dict | None = None,
    t1w=None,
    viewer_js=None,
    embed_budget_bytes: int | None = None,
) -> dict:
    """Write one subject's QC page; every input may be missing or an empty placeholder.

    With ``viewer_js`` (NiiVue as written by :func:`cmb.report.viewer.install_viewer`),
    the page has a Review section: the volume viewer, per-candidate verdicts and their
    export (:mod:`cmb.verdicts`); its layers are embedded within ``embed_budget_bytes``
    (default :data:`cmb.report.viewer.EMBED_BUDGET_BYTES`).

    Returns timings (s) of the parts.
    """
    t0 = time.perf_counter()
    timings = {}
    caps = {**MAX_FIGURES, **(max_figures or {})}
    caps_rows = dict(MAX_ROWS)
    pid = participant_id if participant_id.startswith("sub-") else f"sub-{participant_id}"
    sid = (
        None
        if not session_id
        else (session_id if session_id.startswith("ses-") else f"ses-{session_id}")
    )
    title = f"{pid}{'_' + sid if sid else ''}"

    recs = []
    for path in records:
        r = read_record(path)
        if r is None:
            recs.append(
                {
                    "stage": Path(path).parent.parent.name
                    if sid is None
                    else Path(path).parents[2].name,
                    "status": "na",
                    "error_class": "",
                    "message": "no status record",
                    "log": str(path),
                }
            )
        else:
            recs.append(
                {
                    k: ("" if r.get(k) is None else r.get(k))
                    for k in ("stage", "status", "error_class", "message", "log")
                }
            )
    status = stage_status([r for r in (read_record(p) for p in records) if r is not None])
    errors = [r for r in recs if r["status"] in ("failed", "skipped")]

    det = None
    if (
        detections is not None
        and Path(detections).is_file()
        and Path(detections).stat().st_size > 0
    ):
        det = pd.read_csv(detections, sep="\t", dtype=str, keep_default_na=False)
    meta = read_json_or_none(sidecar) if sidecar else None
    summary = (meta or {}).get("Summary") or {}
    anatomy = bool(summary.get("anatomy_available", True))
    counts = count_detections(det, anatomy=anatomy) if det is not None else None
    regions = []
    if counts is not None:
        for r in REGIONS:
            regions.append(
                {
                    "category": CATEGORY[r],
                    "name": r.replace("_", " "),
                    "L": counts[f"n_{r}_L"],
                    "R": counts[f"n_{r}_R"],
                }
            )
    timings["tables_s"] = time.perf_counter() - t0

    # images: magnitude (and phase) windows, candidate triplets
    t1 = time.perf_counter()
    img = _load(image)
    vol = np.asanyarray(img.dataobj).astype(np.float32) if img is not None else None
    msk_img = _load(mask)
    msk = np.asanyarray(msk_img.dataobj) > 0 if msk_img is not None else None
    if msk is not None and vol is not None and msk.shape != vol.shape:
        msk = None
    ph_img = _load(phase)
    ph = np.asanyarray(ph_img.dataobj).astype(np.float32) if ph_img is not None else None
    if ph is not None and vol is not None and ph.shape != vol.shape:
        ph = None
    volumes, windows = [], []
    if vol is not None:
        volumes.append(vol)
        windows.append(intensity_window(vol, msk))
        if ph is not None:
            volumes.append(ph)
            lim = intensity_window(np.abs(ph), msk, pct=(0.0, 99.0))[1] or 1.0
            windows.append((-lim, lim))
    timings["load_s"] = time.perf_counter() - t1

    def rows_of(sel: pd.DataFrame) -> list[dict]:
        return [{c: r.get(c, _NA) for c in TABLE_COLUMNS} for r in sel.to_dict("records")]

    def rejection_text(r: dict) -> str:
        reason = r.get("rejected_reason", _NA)
        if reason != "vessel":
            return reason
        return (
            f"vessel (dark structure {r.get('vessel_length_mm', _NA)} mm long, elongation "
            f"{r.get('vessel_elongation', _NA)}, {r.get('vessel_angle_b0_deg', _NA)}\u00b0 to B0)"
        )

    def figures_of(sel: pd.DataFrame, cap: int) -> list[dict]:
        if vol is None or not len(sel):
            return []
        out = []
        inv = np.linalg.inv(img.affine)
        for r in sel.head(cap).to_dict("records"):
            try:
                xyz = [float(r["x_mm"]), float(r["y_mm"]), float(r["z_mm"])]
            except ValueError:
                continue
            c = np.rint(nib.affines.apply_affine(inv, xyz)).astype(int)
            try:
                radius = max(float(r.get("diameter_mm", "nan")) / 2 + 1.5, 2.5)
            except ValueError:
                radius = 3.0
            if not math.isfinite(radius):
                radius = 3.0
            jpg = triplet_png(
                volumes,
                windows,
                img.affine,
                c,
                marker_mm=radius,
                half_mm=TRIPLET_HALF_MM,
                fmt="JPEG",
            )
            w, h = image_size(jpg)
            where = (
                ", ".join(
                    v
                    for v in (
                        r.get("mars_region", _NA).replace("_", " "),
                        r.get("hemisphere", _NA),
                        r.get("atlas_label", _NA),
                    )
                    if v and v != _NA
                )
                or "location n/a"
            )
            out.append(
                {
                    "cmb_id": r["cmb_id"],
                    "confidence": r["confidence"],
                    "where": where,
                    "reason": rejection_text(r),
                    "png": data_uri(jpg, "image/jpeg"),
                    "width": w,
                    "height": h,
                }
            )
        return out

    t1 = time.perf_counter()
    if det is not None:
        is_cmb = det["is_cmb"] == "true"
        rejected = det["rejected"] == "true"
        below = ~rejected & (det["above_threshold"] != "true")
        conf = pd.to_numeric(det["confidence"], errors="coerce")
        det_sel = det[is_cmb]
        rej_sel = (
            det[rejected]
            .assign(_c=conf[rejected])
            .sort_values("_c", ascending=False, kind="stable")
        )
        below_sel = (
            det[below].assign(_c=conf[below]).sort_values("_c", ascending=False, kind="stable")
        )
    else:
        det_sel = rej_sel = below_sel = pd.DataFrame(columns=TABLE_COLUMNS)
    context_figs = {
        "detection_figures": figures_of(det_sel, caps["detections"]),
        "rejected_figures": figures_of(rej_sel, caps["rejected"]),
        "below_figures": figures_of(below_sel, caps["below"]),
    }
    timings["triplets_s"] = time.perf_counter() - t1

    t1 = time.perf_counter()
    flicker = None
    mars_img = _load(mars)
    if mars_img is not None and vol is not None and mars_img.shape[:3] == vol.shape:
        labels = np.asanyarray(mars_img.dataobj).astype(np.int16)
        labels[labels == 200] = 0  # regions only: CSF would hide the ventricles
        base, top = flicker_frames(vol, labels, img.affine, windows[0])
        w, h = _png_size(base)
        flicker = {
            "base": data_uri(base, "image/png"),
            "top": data_uri(top, "image/png"),
            "width": w,
            "height": h,
        }
    brain_fig = _figure_uri(figure_brain_mask)
    if brain_fig is None and vol is not None and msk is not None:
        brain_fig = data_uri(overlay_png(vol, msk, img.affine, windows[0]), "image/png")
    timings["qc_figures_s"] = time.perf_counter() - t1

    t1 = time.perf_counter()
    review = None
    if viewer_js is not None and vol is not None:
        review = _review_context(
            out,
            title,
            img,
            vol,
            msk,
            windows[0],
            image,
            phase,
            ph,
            t1w,
            det,
            [
                det_sel.head(caps_rows["detections"]),
                rej_sel.head(caps_rows["rejected"]),
                below_sel.head(caps_rows["below"]),
            ],
            candidates_dseg,
            viewer_js,
            embed_budget_bytes,
        )
    timings["viewer_s"] = time.perf_counter() - t1

    prov: list = []
    if meta is not None:
        _flat(
            "",
            {
                "Provenance": meta.get("Provenance"),
                "Detection": meta.get("Detection"),
                "Localization": meta.get("Localization"),
            },
            prov,
        )
    reg = summary.get("registration") or {}
    detection = (meta or {}).get("Detection") or {}
    context = {
        "title": title,
        "status": status["status"],
        "cmb_version": __version__,
        "errors": errors,
        "counts": counts,
        "regions": regions,
        "note": (meta or {}).get("AnatomyNote"),
        "table_columns": TABLE_COLUMNS,
        "numeric": NUMERIC,
        "detections": rows_of(det_sel.head(caps_rows["detections"])),
        "rejected": rows_of(rej_sel.head(caps_rows["rejected"])),
        "below": rows_of(below_sel.head(caps_rows["below"])),
        "n_detections": len(det_sel),
        "n_rejected": len(rej_sel),
        "n_below": len(below_sel),
        "threshold": _threshold(detection.get("threshold")),
        "has_phase": ph is not None,
        "triplet_mm": int(2 * TRIPLET_HALF_MM),
        **context_figs,
        "flicker": flicker,
        "registration_figure": _figure_uri(figure_registration),
        "registration": {k: v for k, v in reg.items() if v is not None},
        "brain_mask_figure": brain_fig,
        "brain_volume": summary.get("brain_mask_volume_ml"),
        "records": recs,
        "provenance": prov,
        "review": review,
        "phase_convention": (
            phase_convention_columns(read_phase_convention(phase)) if phase else None
        ),
    }
    t1 = time.perf_counter()
    html = environment().get_template("subject.html.j2").render(**context)
    write_text(out, html)
    timings["render_s"] = time.perf_counter() - t1
    timings["total_s"] = time.perf_counter() - t0
    return timings


def _review_context(
    out,
    title,
    img,
    vol,
    msk,
    window,
    image,
    phase,
    ph,
    t1w,
    det,
    selections,
    candidates_dseg,
    viewer_js,
    budget,
) -> dict:
    """The Review section: viewer layers, the candidates to judge and the page's data block."""
    budget = EMBED_BUDGET_BYTES if budget is None else int(budget)
    listed = (
        pd.concat(selections) if selections else None
    )  # the overlay shows the candidates listed for review
    layers = viewer_layers(
        Path(out),
        image=image,
        vol=vol,
        mask=msk,
        window=window,
        phase=phase,
        ph=ph,
        t1w=t1w,
        det=listed,
        candidates_dseg=candidates_dseg,
        budget_bytes=budget,
    )
    status_text = {
        "detected": "detected",
        "rejected": "rejected",
        "below_threshold": "below threshold",
    }
    cands, shown = [], []
    for kind, sel in zip(("detected", "rejected", "below_threshold"), selections):
        for r in sel.to_dict("records"):
            try:
                xyz = [float(r["x_mm"]), float(r["y_mm"]), float(r["z_mm"])]
                diameter = float(r.get("diameter_mm", "nan"))
            except ValueError:
                continue
            ijk = [r.get(c, _NA) for c in ("i", "j", "k")]
            reason = r.get("rejected_reason", _NA)
            cands.append(
                {
                    "cmb_id": int(r["cmb_id"]),
                    "x_mm": xyz[0],
                    "y_mm": xyz[1],
                    "z_mm": xyz[2],
                    "i": ijk[0],
                    "j": ijk[1],
                    "k": ijk[2],
                    "confidence": r.get("confidence", _NA),
                    "radius_mm": round(diameter / 2, 2) if math.isfinite(diameter) else 0,
                    "status": kind,
                }
            )
            where = (
                ", ".join(
                    v
                    for v in (r.get("mars_region", _NA).replace("_", " "), r.get("hemisphere", _NA))
                    if v and v != _NA
                )
                or "n/a"
            )
            shown.append(
                {
                    **cands[-1],
                    "where": where,
                    "xyz": ", ".join(f"{v:.1f}" for v in xyz),
                    "status_text": status_text[kind]
                    + (f" ({reason})" if kind == "rejected" else ""),
                }
            )
    data = {
        "scan": title,
        "storage_key": hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:12],
        "candidates": cands,
        "layers": layers["layers"],
        "inverse_affine": np.linalg.inv(img.affine).tolist(),
        "attach_tolerance_mm": ATTACH_TOLERANCE_MM,
    }
    viewer_src = Path(
        os.path.relpath(Path(viewer_js).resolve(), Path(out).resolve().parent)
    ).as_posix()
    return {
        "scan": title,
        "layers": layers["layers"],
        "candidates": shown,
        "reasons": REASONS,
        "data": data,
        "viewer_src": viewer_src,
        "embedded_mb": f"{layers['embedded_bytes'] / 1e6:.1f}",
        "budget_mb": f"{budget / 1e6:.1f}",
        "served": ", ".join(la["label"] for la in layers["layers"] if "url" in la),
    }


# --------------------------------------------------------------------------- cohort


def _int(v) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _site_table(counts: pd.DataFrame, by: str) -> dict | None:
    known = counts[counts[by] != _NA]
    if known.empty:
        return None
    rows, groups = [], {}
    for name, g in known.groupby(by, sort=True):
        n = pd.to_numeric(g["n_cmb"], errors="coerce").dropna()
        pat = g["mars_pattern"].value_counts()
        rows.append(
            {
                "name": name,
                "n": len(g),
                "failed": int((g["status"] != "ok").sum()),
                "mean": f"{n.mean():.2f}" if len(n) else _NA,
                "median": f"{n.median():g}" if len(n) else _NA,
                "any_pct": f"{100 * (n > 0).mean():.0f}" if len(n) else _NA,
                **{
                    p: int(pat.get(p, 0))
                    for p in ("strictly_lobar", "deep_or_mixed", "infratentorial_only")
                },
            }
        )
        if len(n):
            groups[str(name)] = n.to_numpy()
    figure = (
        data_uri(site_boxplot_svg(groups, f"CMBs per scan by {by}"), "image/svg+xml")
        if len(groups) > 1
        else None
    )
    return {"by": by, "rows": rows, "figure": figure}


def render_cohort_report(
    counts_csv,
    detections_csv,
    out,
    *,
    failures_csv=None,
    out_counts_figure=None,
    out_regions_figure=None,
) -> dict:
    """Write the cohort QC page (and its two charts as SVG files when asked)."""
    t0 = time.perf_counter()
    counts = pd.read_csv(counts_csv, dtype=str, keep_default_na=False)
    counts = counts.reindex(
        columns=COUNT_COLUMNS, fill_value=_NA
    )  # a table of an older version: n/a
    failures = (
        pd.read_csv(failures_csv, dtype=str, keep_default_na=False)
        if failures_csv and Path(failures_csv).is_file() and Path(failures_csv).stat().st_size
        else None
    )
    n_cmb = pd.to_numeric(counts["n_cmb"], errors="coerce")
    have = n_cmb.notna()
    hist_svg = count_histogram_svg(n_cmb[have].astype(int).tolist())
    left = {
        r: int(pd.to_numeric(counts[f"n_{r}_L"], errors="coerce").fillna(0).sum()) for r in REGIONS
    }
    right = {
        r: int(pd.to_numeric(counts[f"n_{r}_R"], errors="coerce").fillna(0).sum()) for r in REGIONS
    }
    regions_svg = region_bars_svg(left, right, CATEGORY)
    if out_counts_figure:
        write_text(out_counts_figure, hist_svg)
    if out_regions_figure:
        write_text(out_regions_figure, regions_svg)

    patterns = []
    vc = counts["mars_pattern"].value_counts()
    for p in ("strictly_lobar", "deep_or_mixed", "infratentorial_only", "none", _NA):
        n = int(vc.get(p, 0))
        patterns.append({"name": p, "n": n, "pct": f"{100 * n / max(len(counts), 1):.1f}"})

    def scan(r):
        return r["participant_id"] + ("_" + r["session_id"] if r["session_id"] != _NA else "")

    q1, q3 = np.percentile(n_cmb[have], [25, 75]) if have.any() else (0.0, 0.0)
    limit = q3 + 3 * (q3 - q1)
    outliers, failed, subjects = [], [], []
    for r in counts.to_dict("records"):
        link = subject_report_link(r["participant_id"], r["session_id"])
        flags = (
            [] if r["qc_flags"] == _NA else [f for f in r["qc_flags"].split(";") if f != "failed"]
        )
        n = _int(r["n_cmb"])
        if n is not None and n > limit and n > 0:
            flags.append("count_outlier")
        if flags:
            outliers.append(
                {
                    "scan": scan(r),
                    "link": link,
                    "flags": ", ".join(flags),
                    "n_cmb": r["n_cmb"],
                    "n_above": r["n_above_threshold"],
                    "dice": r["registration_mask_dice"],
                    "nmi": r["registration_nmi"],
                    "volume": r["brain_mask_volume_ml"],
                }
            )
        if r["status"] != "ok":
            failed.append(
                {
                    "scan": scan(r),
                    "link": link,
                    "stage": r["failing_stage"],
                    "message": r["failure_message"],
                }
            )
        subjects.append(
            {
                "pid": r["participant_id"],
                "sid": r["session_id"],
                "scan": scan(r),
                "link": link,
                "status": r["status"],
                "n_cmb": r["n_cmb"],
                "pattern": r["mars_pattern"],
                "flags": r["qc_flags"],
            }
        )
    site_tables = [t for t in (_site_table(counts, "site"), _site_table(counts, "scanner")) if t]
    key = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:12]
    context = {
        "cmb_version": __version__,
        "n_scans": len(counts),
        "n_ok": int((counts["status"] == "ok").sum()),
        "n_failed": int((counts["status"] != "ok").sum()),
        "n_cmb_total": int(n_cmb.fillna(0).sum()),
        "n_counted": int(have.sum()),
        "counts_figure": data_uri(hist_svg, "image/svg+xml"),
        "regions_figure": data_uri(regions_svg, "image/svg+xml"),
        "patterns": patterns,
        "site_tables": site_tables,
        "outliers": outliers,
        "count_limit": f"{limit:g}",
        "failed": failed,
        "failure_rows": [] if failures is None else failures.to_dict("records"),
        "subjects": subjects,
        "storage_key": key,
    }
    html = environment().get_template("cohort.html.j2").render(**context)
    write_text(out, html)
    return {"total_s": time.perf_counter() - t0, "scans": len(counts)}
