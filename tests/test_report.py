"""cmb.report: self-contained subject and cohort pages, speed, and a real headless browser.

The browser tests use Debian's chromium (``apt-get install chromium``) with
``--headless --no-sandbox --disable-gpu`` and every host unresolvable; they are
skipped where chromium is not installed. Screenshots are kept under the test's
temporary folder (and copied to ``$CMB_SCREENSHOT_DIR`` when set).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cmb.cohort_tables import write_cohort_tables
from cmb.localize import format_detections, write_table
from cmb.report import render_cohort_report, render_subject_report, subject_report_link

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_report import synthetic_cohort  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _subject(
    tmp: Path, shape=(64, 72, 40), zooms=(1.5, 1.5, 2.5), n_cmb=4, compressed=True
) -> dict:
    """A small subject: image with dark spots, phase, mask, MARS map, detections, records."""
    rng = np.random.default_rng(0)
    aff = np.diag([*zooms, 1.0])
    aff[:3, 3] = -0.5 * np.asarray(shape) * np.asarray(zooms)
    grid = np.indices(shape)
    centre = (np.asarray(shape) - 1) / 2
    r = np.sqrt(sum(((g - c) * z / 60.0) ** 2 for g, c, z in zip(grid, centre, zooms)))
    mask = r < 1.0
    image = np.where(mask, 100.0, 5.0) + rng.normal(0, 3, shape)
    mars = np.where(mask, np.where(grid[0] < shape[0] // 2, 1, 107), 0).astype(np.int16)
    rows = []
    spots = [
        tuple(int(v) for v in rng.integers([s // 4 for s in shape], [3 * s // 4 for s in shape]))
        for _ in range(n_cmb + 4)
    ]
    for n, c in enumerate(spots):
        image[c[0] - 1 : c[0] + 2, c[1] - 1 : c[1] + 2, c[2]] = 20.0
        xyz = nib.affines.apply_affine(aff, c)
        kind = "cmb" if n < n_cmb else ("csf", "outside_brain", "vessel", "below")[n - n_cmb]
        rows.append(
            {
                "participant_id": "sub-01",
                "session_id": "n/a",
                "cmb_id": n + 1,
                "confidence": 0.9 - 0.05 * n if kind != "below" else 0.1,
                "above_threshold": kind != "below",
                "rejected": kind in ("csf", "outside_brain", "vessel"),
                "rejected_reason": kind if kind in ("csf", "outside_brain", "vessel") else "n/a",
                "is_cmb": kind == "cmb",
                "x_mm": xyz[0],
                "y_mm": xyz[1],
                "z_mm": xyz[2],
                "i": c[0],
                "j": c[1],
                "k": c[2],
                "mni_x": xyz[0],
                "mni_y": xyz[1],
                "mni_z": xyz[2],
                "volume_mm3": 20.0,
                "diameter_mm": 3.4,
                "mars_category": "lobar" if kind == "cmb" else "non-parenchyma",
                "mars_region": "frontal" if kind == "cmb" else "csf",
                "hemisphere": "L",
                "atlas_label": "ctx-lh-superiorfrontal",
                "phase_sign": "paramagnetic",
                "vessel_length_mm": 21.5 if kind == "vessel" else 3.0,
                "vessel_elongation": 9.3 if kind == "vessel" else 1.2,
                "vessel_angle_b0_deg": 6.0 if kind == "vessel" else 40.0,
            }
        )
    ext = ".nii.gz" if compressed else ".nii"
    files = {}
    for name, data in (
        ("image", image.astype(np.float32)),
        ("phase", rng.normal(0, 0.3, shape).astype(np.float32)),
        ("mask", mask.astype(np.uint8)),
        ("mars", mars),
    ):
        files[name] = tmp / f"{name}{ext}"
        nib.save(nib.Nifti1Image(data, aff), files[name])
    files["detections"] = tmp / "sub-01_desc-cmb_detections.tsv"
    write_table(format_detections(pd.DataFrame(rows)), files["detections"])
    files["sidecar"] = tmp / "sub-01_desc-cmb_detections.json"
    files["sidecar"].write_text(
        json.dumps(
            {
                "Summary": {
                    "anatomy_available": True,
                    "brain_mask_volume_ml": 1400.0,
                    "registration": {"nmi": 1.15, "mask_dice": 0.95},
                },
                "Detection": {"threshold": 0.5},
                "Provenance": {"cmb_version": "0.1.0", "git": {"commit": "abc"}},
            }
        )
    )
    records = []
    for stage, status in (("ingest", "ok"), ("register", "ok"), ("plot_brain_mask", "failed")):
        p = tmp / "status" / stage / "sub-01" / "sub-01_status.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(
            json.dumps(
                {
                    "stage": stage,
                    "status": status,
                    "participant_id": "sub-01",
                    "message": "figure exploded" if status == "failed" else None,
                    "error_class": "RuntimeError" if status == "failed" else None,
                }
            )
        )
        records.append(p)
    files["records"] = records
    return files


def _render(files, out, **extra):
    return render_subject_report(
        participant_id="01",
        session_id=None,
        out=out,
        detections=files["detections"],
        sidecar=files["sidecar"],
        image=files["image"],
        phase=files["phase"],
        mask=files["mask"],
        mars=files["mars"],
        records=files["records"],
        **extra,
    )


def assert_self_contained(html: str) -> None:
    assert not re.search(r"https?://", html), "external URL in the page"
    for m in re.finditer(r"""(?:src|href)=["']([^"']*)["']""", html):
        target = m.group(1)
        assert target.startswith(("data:", "#", "../", "sub-", "cmb_")), target
    assert "<link " not in html and "@import" not in html


@pytest.fixture
def subject_page(tmp_path):
    files = _subject(tmp_path)
    out = tmp_path / "sub-01_report.html"
    _render(files, out)
    return {"files": files, "out": out, "html": out.read_text()}


def test_subject_page_has_every_section(subject_page):
    html = subject_page["html"]
    for section in ("summary", "detections", "rejected", "registration", "brainmask", "provenance"):
        assert f'id="{section}"' in html
    assert "deep_or_mixed" in html or "strictly_lobar" in html
    assert (
        html.count('alt="CMB ') == 8
    )  # a triplet per detection, rejected and below-threshold candidate
    assert (
        "Rejected by the vessel rule or the anatomical filter (3)" in html
        and "Below threshold (1)" in html
    )
    assert (
        "rejected: vessel (dark structure 21.5 mm long, elongation 9.30, 6.0\u00b0 to B0)" in html
    )
    assert "figure exploded" in html  # the failed stage's message


def test_subject_page_is_self_contained(subject_page):
    assert_self_contained(subject_page["html"])


def test_subject_page_of_a_failed_subject_renders(tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    rec = tmp_path / "status" / "ingest" / "sub-02" / "sub-02_status.json"
    rec.parent.mkdir(parents=True)
    rec.write_text(
        json.dumps(
            {"stage": "ingest", "status": "failed", "message": "sub-02_swi.nii.gz: truncated"}
        )
    )
    out = tmp_path / "sub-02_report.html"
    render_subject_report(
        participant_id="02",
        session_id="1",
        out=out,
        detections=empty,
        sidecar=empty,
        image=empty,
        mask=empty,
        mars=empty,
        figure_brain_mask=empty,
        figure_registration=empty,
        records=[rec],
    )
    html = out.read_text()
    assert "truncated" in html and "No detections table" in html and 'class="badge failed"' in html
    assert_self_contained(html)


def test_subject_page_shows_the_phase_convention_and_its_flag(tmp_path):
    from cmb.phase_convention import PhaseSignEstimate, resolve_paramagnetic_phase

    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    phase = tmp_path / "sub-03_part-phase_desc-preproc_GRE.nii.gz"
    phase.write_bytes(b"")
    decision = resolve_paramagnetic_phase(
        "auto",
        "Philips",
        estimate=PhaseSignEstimate("positive", 6.1, True, 0.85, 14, 400, 200, 0.1, 3.0, ""),
    )
    (tmp_path / "sub-03_part-phase_desc-preproc_GRE.json").write_text(
        json.dumps({"PhaseConvention": decision.to_dict()})
    )
    out = tmp_path / "sub-03_report.html"
    render_subject_report(
        participant_id="03",
        session_id=None,
        out=out,
        detections=empty,
        sidecar=empty,
        image=empty,
        phase=phase,
        mask=empty,
        mars=empty,
        figure_brain_mask=empty,
        figure_registration=empty,
    )
    html = out.read_text()
    section = html[html.index('id="phase-convention"') :]
    assert "phase_convention_mismatch</span> the data overruled the vendor rule" in section
    assert (
        "<td>positive</td><td>data</td><td>negative</td><td>positive</td><td>6.10</td>" in section
    )
    render_subject_report(
        participant_id="03",
        session_id=None,
        out=out,
        detections=empty,
        sidecar=empty,
        image=empty,
        mask=empty,
        mars=empty,
        figure_brain_mask=empty,
        figure_registration=empty,
    )
    assert 'id="phase-convention"' not in out.read_text()  # no phase, no section


def test_subject_report_at_swi_size_stays_small(tmp_path):
    """A 0.5 mm SWI-size scan with 30 CMBs: the page holds crops, not volumes (1.9 MB measured). Its render
    time is bench/bench_report.py's to measure (a timed test fails on a loaded machine)."""
    files = _subject(
        tmp_path, shape=(512, 448, 72), zooms=(0.5, 0.5, 2.0), n_cmb=30, compressed=False
    )
    _render(files, tmp_path / "big.html")
    html = (tmp_path / "big.html").read_text()
    assert len(html.encode()) < 3_000_000
    assert_self_contained(html)


# --------------------------------------------------------------------------- cohort


@pytest.fixture(scope="module")
def cohort_page(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort_report")
    subjects = synthetic_cohort(root / "subjects", 80, seed=9, fail_fraction=0.1)
    cohort = root / "cohort"
    counts, _ = write_cohort_tables(
        subjects,
        cohort / "cmb_counts.csv",
        cohort / "cmb_detections.csv",
        out_ratings=cohort / "cmb_ratings_template.tsv",
    )
    fail = counts[counts["status"] == "failed"][
        ["participant_id", "session_id", "failing_stage", "failure_message"]
    ]
    failures = fail.rename(columns={"failing_stage": "stage", "failure_message": "message"}).assign(
        error_class="RuntimeError", log="n/a"
    )
    failures.to_csv(root / "failures.csv", index=False)
    render_cohort_report(
        cohort / "cmb_counts.csv",
        cohort / "cmb_detections.csv",
        cohort / "cmb_report.html",
        failures_csv=root / "failures.csv",
        out_counts_figure=cohort / "figures" / "counts.svg",
        out_regions_figure=cohort / "figures" / "regions.svg",
    )
    # subject pages where the links point, so that the browser can follow them
    for s in subjects[:3]:
        page = cohort / subject_report_link(s.participant_id, None)
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text("<!DOCTYPE html><title>x</title>")
    return {
        "root": root,
        "counts": counts,
        "html": (cohort / "cmb_report.html").read_text(),
        "path": cohort / "cmb_report.html",
    }


def test_cohort_page_lists_every_subject_and_failure(cohort_page):
    html, counts = cohort_page["html"], cohort_page["counts"]
    for pid in counts["participant_id"]:
        assert f'href="{subject_report_link(pid, None)}"' in html, pid
        assert f'data-pid="{pid}"' in html
    failed = counts[counts["status"] == "failed"]
    assert len(failed) >= 1
    for row in failed.to_dict("records"):
        assert re.search(
            rf'<tr class="failedrow"><td><a [^>]*>{row["participant_id"]}</a></td><td>'
            rf"{row['failing_stage']}</td><td>{re.escape(row['failure_message'])}</td>",
            html,
        )
    assert f"Failed scans ({len(failed)})" in html


def test_cohort_page_sections_and_figures(cohort_page):
    html = cohort_page["html"]
    for section in ("overview", "regions", "sites", "outliers", "failures", "subjects"):
        assert f'id="{section}"' in html
    assert (
        "By site" in html and "By scanner" in html and "sub-0007" in html
    )  # the extreme count is an outlier
    assert (
        (cohort_page["root"] / "cohort" / "figures" / "counts.svg").read_text().startswith("<svg")
    )
    assert 'id="export"' in html
    assert_self_contained(html)


# --------------------------------------------------------------------------- browser


def chromium(
    url: Path, *args: str, timeout: float = 120, fragment: str = ""
) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-', dir=url.parent)}",
        *args,
        url.resolve().as_uri() + fragment,
    ]  # a fresh profile: no ratings left in localStorage
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _console(text: str) -> list[str]:
    return [line for line in text.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def _screenshot(page: Path, name: str, height: int) -> Path:
    shot = page.parent / f"{name}.png"
    proc = chromium(
        page, "--hide-scrollbars", f"--window-size=1400,{height}", f"--screenshot={shot}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not _console(proc.stderr), _console(proc.stderr)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1400, height)
        px = np.asarray(im.convert("L"))
    assert px.std() > 20  # not a blank page
    if os.environ.get("CMB_SCREENSHOT_DIR"):
        Path(os.environ["CMB_SCREENSHOT_DIR"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["CMB_SCREENSHOT_DIR"]) / shot.name)
    return shot


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_browser_subject_page(subject_page):
    _screenshot(subject_page["out"], "subject", 2400)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_browser_cohort_page_runs_its_script(cohort_page):
    _screenshot(cohort_page["path"], "cohort", 2400)
    proc = chromium(cohort_page["path"], "--dump-dom")
    assert not _console(proc.stderr), _console(proc.stderr)
    n = len(cohort_page["counts"])
    assert f"0 of {n} rated" in proc.stdout  # the rating script ran to its end


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_browser_rating_export(cohort_page):
    proc = chromium(cohort_page["path"], "--dump-dom", fragment="#cmb-selftest")
    assert not _console(proc.stderr), _console(proc.stderr)
    m = re.search(r'<pre id="cmb-selftest">(.*?)</pre>', proc.stdout, re.S)
    assert m, proc.stdout[-2000:]
    lines = m.group(1).strip("\n").split("\n")
    counts = cohort_page["counts"]
    assert (
        lines[0] == "participant_id\tsession_id\trating\treviewer\tcomment"
        and len(lines) == len(counts) + 1
    )
    first = counts.iloc[0]
    assert (
        lines[1]
        == f"{first['participant_id']}\t{first['session_id']}\tfail\tselftest\tmotion artefact"
    )
    assert lines[2].endswith("\tn/a\tselftest\tn/a")
