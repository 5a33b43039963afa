"""The reviewer loop: the NiiVue viewer in a real headless browser, verdict files, `cmb review`.

The browser test drives Debian's chromium (``/usr/bin/chromium``) through Playwright
(``executable_path``: no browser download), with WebGL2 from SwiftShader
(``--use-angle=swiftshader --enable-unsafe-swiftshader``); it is skipped where chromium
or Playwright is missing. Every request the page makes is recorded, and any that would
leave the machine fails the test.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import _render, _subject

from cmb.report.viewer import NIIVUE_SHA256, install_viewer
from cmb.verdicts import (
    VerdictError,
    attach_verdicts,
    consensus,
    read_verdicts,
    review_columns,
    reviewer_agreement,
    verdict_file_name,
    write_verdicts,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the test extra is not installed
    sync_playwright = None
BROWSER_FLAGS = [
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--no-sandbox",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
LOCAL_SCHEMES = ("file:", "data:", "blob:")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or sync_playwright is None, reason="chromium or playwright not installed"
)


@pytest.fixture
def review_page(tmp_path):
    """A subject page with the Review section, in a derivatives-like folder with the viewer installed."""
    root = tmp_path / "derivatives"
    files = _subject(_mkdir(root / "sub-01" / "anat"))
    viewer = install_viewer(root / "viewer")
    out = root / "sub-01" / "sub-01_report.html"
    _render(files, out, viewer_js=viewer)
    det = pd.read_csv(files["detections"], sep="\t", dtype=str, keep_default_na=False)
    return {"root": root, "out": out, "files": files, "det": det}


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_vendored_niivue_is_the_pinned_build(tmp_path):
    script = install_viewer(tmp_path / "viewer")
    assert hashlib.sha256(script.read_bytes()).hexdigest() == NIIVUE_SHA256
    assert "BSD 2-Clause" in (tmp_path / "viewer" / "LICENSE").read_text()
    assert "0.69.0" in (tmp_path / "viewer" / "README.md").read_text()


def test_page_references_the_viewer_and_embeds_its_layers(review_page):
    html = review_page["out"].read_text()
    assert '<script src="../viewer/niivue.umd.js"></script>' in html
    assert 'id="review-table"' in html and html.count('<tr data-cid="') == 8
    assert "minIP slab" in html and 'value="phase"' in html
    assert "https://" not in html and "http://" not in html


def test_layers_over_budget_are_read_from_the_derivatives_folder(tmp_path):
    root = tmp_path / "derivatives"
    files = _subject(_mkdir(root / "sub-01" / "anat"))
    out = root / "sub-01" / "sub-01_report.html"
    _render(files, out, viewer_js=install_viewer(root / "viewer"), embed_budget_bytes=1000)
    html = out.read_text()
    assert '"url": "anat/image.nii.gz"' in html and "read from the derivatives folder" in html


@needs_browser
def test_browser_review_loop(review_page, tmp_path):
    det = review_page["det"]
    listed = pd.concat(
        [
            det[det["is_cmb"] == "true"],
            det[det["rejected"] == "true"],
            det[(det["rejected"] != "true") & (det["above_threshold"] != "true")],
        ]
    )
    ids = listed["cmb_id"].astype(int).tolist()
    xyz = listed[["x_mm", "y_mm", "z_mm"]].astype(float).to_numpy()
    requests, errors = [], []
    with sync_playwright() as p:
        browser, page = open_viewer_offline(p, review_page["out"], requests, errors)
        assert page.locator("#review-status").text_content() == "viewer ready"

        # the canvas shows the volume: non-blank pixels
        canvas = page.locator("#review-canvas")
        canvas.scroll_into_view_if_needed()
        first = gray_pixels(canvas.screenshot())
        assert (first > 30).mean() > 0.05 and first.std() > 20

        # the first candidate is selected; clicking another row moves the viewer there
        assert np.allclose(page.evaluate("window.cmbReview.cursor()"), xyz[0], atol=2.6)
        page.locator(f'#review-table tr[data-cid="{ids[2]}"] td').first.click()
        assert np.allclose(page.evaluate("window.cmbReview.cursor()"), xyz[2], atol=2.6)
        assert not np.allclose(xyz[2], xyz[0], atol=2.6)
        moved = gray_pixels(canvas.screenshot())
        assert np.abs(moved.astype(int) - first.astype(int)).mean() > 0.5  # the slices changed
        page.keyboard.press("n")  # next candidate
        assert np.allclose(page.evaluate("window.cmbReview.cursor()"), xyz[3], atol=2.6)
        page.keyboard.press("p")
        assert np.allclose(page.evaluate("window.cmbReview.cursor()"), xyz[2], atol=2.6)

        # verdicts: reject #1 (vein), accept #2, add a missed CMB at a clicked point
        page.fill("#review-reviewer", "alice")
        row0, row1 = (page.locator(f'#review-table tr[data-cid="{i}"]') for i in ids[:2])
        row0.locator("select.reason").select_option("vein")
        row0.locator("input.comment").fill("tube\ton two slices")
        row0.locator('button[data-verdict="reject"]').click()
        row1.locator('button[data-verdict="accept"]').click()
        box = canvas.bounding_box()
        canvas.click(
            position={"x": box["width"] * 0.25, "y": box["height"] * 0.75}
        )  # the axial view
        cursor = page.evaluate("window.cmbReview.cursor()")
        assert not np.allclose(cursor, xyz[1], atol=2.6)
        page.fill("#review-add-comment", "missed, near the ventricle")
        page.click("#review-add")
        assert (
            "2 of 8 candidates judged, 1 added" in page.locator("#review-progress").text_content()
        )

        with page.expect_download() as dl:
            page.click("#review-export")
        assert dl.value.suggested_filename == verdict_file_name("sub-01", "alice")
        saved = tmp_path / "verdicts" / dl.value.suggested_filename
        dl.value.save_as(saved)
        table = read_verdicts(saved)
        assert table["verdict"].tolist() == ["reject", "accept", "added"]
        assert table["reason"].tolist() == ["vein", "n/a", "n/a"] and set(table["reviewer"]) == {
            "alice"
        }
        assert table["candidate_id"].iloc[:2].tolist() == ids[:2] and np.isnan(
            table["candidate_id"].iloc[2]
        )
        assert np.allclose(table[["x_mm", "y_mm", "z_mm"]].to_numpy()[:2], xyz[:2], atol=0.01)
        assert np.allclose(table[["x_mm", "y_mm", "z_mm"]].to_numpy()[2], cursor, atol=0.01)
        assert (
            table["comment"].iloc[0] == "tube on two slices"
            and table["time"].str.match(r"\d{4}-\d\d-\d\dT").all()
        )
        assert table[["i", "j", "k"]].notna().all().all()

        # a second reviewer's file: imported beside alice's, one verdict re-attached by
        # position (1 mm away, under a stale id), one kept without a candidate
        bob = pd.DataFrame(
            {
                "x_mm": [xyz[0][0] + 1.0, 90.0],
                "y_mm": [xyz[0][1], 90.0],
                "z_mm": [xyz[0][2], 90.0],
                "verdict": ["accept", "reject"],
                "reason": ["n/a", "artefact"],
                "candidate_id": [999, 1000],
                "comment": ["", "old run"],
            }
        )
        bob_file = write_verdicts(bob, tmp_path / "verdicts", "sub-01", "bob")
        page.set_input_files("#review-import", str(bob_file))
        page.wait_for_function(
            "document.getElementById('review-status').textContent.indexOf('imported') >= 0"
        )
        assert (
            "imported 2 verdicts of bob (1 without a candidate"
            in page.locator("#review-status").text_content()
        )
        assert row0.locator(".others").text_content() == "bob: accept"
        page.set_input_files("#review-import", str(saved))  # alice again: refused, not overwritten
        page.wait_for_function(
            "document.getElementById('review-status').textContent.indexOf('not overwritten') >= 0"
        )
        assert page.evaluate("window.cmbReview.tsv('alice')") == saved.read_text()
        page.fill("#review-reviewer", "bob")
        assert "kept without a candidate" in page.locator("#review-progress").text_content()
        assert "candidate 1000 of an earlier run" in page.locator("#review-orphans").text_content()
        assert errors == [], errors
        browser.close()
    assert requests and all(u.startswith(LOCAL_SCHEMES) for u in requests), [
        u for u in requests if not u.startswith(LOCAL_SCHEMES)
    ]


def open_viewer_offline(playwright, page_file: Path, requests: list, errors: list):
    """Chromium on ``page_file`` with its viewer ready; every request goes to ``requests`` and only file:,
    data: and blob: ones are served (anything that would leave the machine is aborted), page errors to
    ``errors``. Returns (browser, page)."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    context.route(
        "**/*",
        lambda route: (
            requests.append(route.request.url),
            route.continue_() if route.request.url.startswith(LOCAL_SCHEMES) else route.abort(),
        ),
    )
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_file.as_uri())
    page.wait_for_function("window.cmbReview && window.cmbReview.ready", timeout=90_000)
    return browser, page


def gray_pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("L"))


# ------------------------------------------------------------------ verdict files


def _verdicts(**cols) -> pd.DataFrame:
    base = {
        "x_mm": [0.0],
        "y_mm": [0.0],
        "z_mm": [0.0],
        "verdict": ["accept"],
        "reason": ["n/a"],
        "candidate_id": [1.0],
    }
    return pd.DataFrame({**base, **cols})


def test_malformed_verdict_file_names_file_and_line(tmp_path):
    good = write_verdicts(_verdicts(), tmp_path, "sub-01", "alice")
    lines = good.read_text().splitlines()
    bad = tmp_path / "sub-02_rater-alice_label-CMB_dseg.tsv"
    bad.write_text(
        "\n".join([lines[0], lines[1], lines[1].replace("\taccept\t", "\tmaybe\t")]) + "\n"
    )
    with pytest.raises(VerdictError, match=rf"{bad}, line 3: verdict 'maybe'"):
        read_verdicts(bad)
    bad.write_text("\n".join([lines[0], lines[1].replace("\t0.0\t", "\tabc\t", 1)]) + "\n")
    with pytest.raises(VerdictError, match=r"line 2: column x_mm is 'abc'"):
        read_verdicts(bad)
    bad.write_text("x_mm\ty_mm\n1\t2\n")
    with pytest.raises(
        VerdictError, match=r"line 1: header lacks column\(s\) z_mm, verdict, reviewer"
    ):
        read_verdicts(bad)
    bad.write_text(lines[0] + "\n" + lines[1].replace("\taccept\tn/a\t", "\treject\tn/a\t") + "\n")
    with pytest.raises(VerdictError, match=r"line 2: a rejection needs a reason"):
        read_verdicts(bad)


def test_second_reviewer_never_overwrites_the_first(tmp_path):
    a = write_verdicts(_verdicts(), tmp_path, "sub-01", "alice")
    b = write_verdicts(_verdicts(verdict=["reject"], reason=["vein"]), tmp_path, "sub-01", "bob")
    assert a != b and read_verdicts(a)["verdict"].tolist() == ["accept"]
    with pytest.raises(FileExistsError, match="not overwritten"):
        write_verdicts(_verdicts(verdict=["unsure"]), tmp_path, "sub-01", "alice")
    assert read_verdicts(a)["verdict"].tolist() == ["accept"]


def test_verdicts_reattach_by_position_and_keep_the_others():
    cands = pd.DataFrame(
        {"cmb_id": [7, 8], "x_mm": [10.0, 40.0], "y_mm": [0.0, 0.0], "z_mm": [0.0, 0.0]}
    )
    v = _verdicts(
        x_mm=[11.0, 40.0, 80.0],
        y_mm=[0.0] * 3,
        z_mm=[0.0] * 3,
        verdict=["accept", "reject", "accept"],
        reason=["n/a", "vein", "n/a"],
        candidate_id=[1.0, 8.0, 3.0],
    )
    attached, orphans = attach_verdicts(v, cands)
    assert attached["cmb_id"].tolist() == [7, 8] and attached["moved_mm"].tolist() == [1.0, 0.0]
    assert orphans["x_mm"].tolist() == [80.0]


def test_consensus_and_agreement_of_two_reviewers():
    a = _verdicts(
        x_mm=[0.0, 20.0, 40.0],
        y_mm=[0.0] * 3,
        z_mm=[0.0] * 3,
        verdict=["accept", "accept", "reject"],
        reason=["n/a", "n/a", "vein"],
        candidate_id=[1.0, 2.0, 3.0],
    ).assign(reviewer="a")
    b = a.assign(
        verdict=["accept", "reject", "reject"], reason=["n/a", "vein", "vein"], reviewer="b"
    )
    b = pd.concat(
        [b, _verdicts(x_mm=[60.0], verdict=["added"], candidate_id=[np.nan]).assign(reviewer="b")]
    )
    cons = consensus([a, b])
    assert cons["verdict"].tolist() == ["accept", "unsure", "reject", "unsure"]
    agree = reviewer_agreement({"sub-01": [a, b]}).iloc[0]
    assert (agree["n_candidates"], agree["n_both_cmb"], agree["n_only_a"], agree["n_only_b"]) == (
        4,
        1,
        1,
        1,
    )
    assert agree["agreement"] == 0.5 and agree["kappa"] == 0.0


def test_review_columns_of_the_cohort_table(tmp_path, review_page, caplog):
    det = review_page["det"]
    counted = det[det["is_cmb"] == "true"]
    v = pd.DataFrame(
        {
            "x_mm": counted["x_mm"].astype(float),
            "y_mm": counted["y_mm"].astype(float),
            "z_mm": counted["z_mm"].astype(float),
            "verdict": "accept",
            "reason": "n/a",
            "candidate_id": counted["cmb_id"].astype(int),
        }
    )
    folder = tmp_path / "verdicts"
    files = [
        write_verdicts(v, folder, "sub-01", "alice"),
        write_verdicts(v.iloc[:-1], folder, "sub-01", "bob"),
        write_verdicts(v, folder, "sub-09", "alice"),
    ]  # a scan not in the cohort: reported
    scans = [("sub-01", "n/a", review_page["files"]["detections"]), ("sub-02", "n/a", None)]
    cols = review_columns(scans, files[:1])
    assert cols.iloc[0][["reviewed", "verdict", "n_reviewers", "n_cmb_reviewed"]].tolist() == [
        "true",
        "confirmed",
        "1",
        str(len(counted)),
    ]
    assert cols.iloc[1][["reviewed", "verdict", "n_reviewers"]].tolist() == ["n/a", "n/a", "0"]
    cols = review_columns(scans, files)
    assert cols.iloc[0][["reviewed", "verdict", "n_reviewers"]].tolist() == [
        "false",
        "confirmed",
        "2",
    ]
    assert "sub-09: no such scan" in caplog.text


# ------------------------------------------------------------------ cmb review


@pytest.fixture
def served(review_page, tmp_path):
    import threading

    from cmb.review_server import make_server

    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    (review_page["root"] / "sub-01" / "link").symlink_to(secret)
    (review_page["root"] / ".snakemake").mkdir()
    (review_page["root"] / ".snakemake" / "x").write_text("hidden")
    server = make_server(review_page["root"])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address
    server.shutdown()
    server.server_close()


def _get(address, path, method="GET"):
    conn = http.client.HTTPConnection(*address, timeout=10)
    conn.putrequest(
        method, path, skip_host=False, skip_accept_encoding=True
    )  # the path is sent as is
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def test_review_server_serves_the_folder_read_only(served):
    host, port = served
    assert host == "127.0.0.1" and port > 0
    status, body = _get(served, "/sub-01/sub-01_report.html")
    assert status == 200 and b'id="review"' in body
    assert _get(served, "/viewer/niivue.umd.js")[0] == 200
    assert _get(served, "/sub-01/anat/image.nii.gz")[0] == 200
    for path in (
        "/../secret.txt",
        "/sub-01/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/sub-01/%2E%2E%2F%2E%2E/secret.txt",
        "/sub-01/link",
        "/.snakemake/x",
        "/sub-01/",
        "//etc/passwd",
        "/..%5c..%5csecret.txt",
    ):
        status, body = _get(served, path)
        assert status == 404 and b"outside" not in body and b"hidden" not in body, path
    assert _get(served, "/sub-01/sub-01_report.html", "POST")[0] == 405
    assert _get(served, "/sub-01/sub-01_report.html", "PUT")[0] == 405


def test_review_server_refuses_a_remote_address_without_the_flag(tmp_path):
    from cmb.review_server import make_server

    with pytest.raises(ValueError, match="not a loopback address.*--allow-remote"):
        make_server(tmp_path, "0.0.0.0")
    make_server(tmp_path, "0.0.0.0", allow_remote=True).server_close()


def test_cmb_review_prints_its_url(review_page):
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmb.cli", "review", str(review_page["root"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        m = __import__("re").search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line + proc.stderr.read()
        assert _get(("127.0.0.1", int(m.group(1))), "/sub-01/sub-01_report.html")[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@needs_browser
def test_browser_reads_layers_over_budget_through_cmb_review(tmp_path):
    import threading

    from cmb.review_server import make_server

    root = tmp_path / "derivatives"
    files = _subject(_mkdir(root / "sub-01" / "anat"))
    out = root / "sub-01" / "sub-01_report.html"
    _render(files, out, viewer_js=install_viewer(root / "viewer"), embed_budget_bytes=1000)
    server = make_server(root)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    requests = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"http://{host}:{port}/sub-01/sub-01_report.html")
            page.wait_for_function("window.cmbReview && window.cmbReview.ready", timeout=90_000)
            assert page.locator("#review-status").text_content() == "viewer ready"
            canvas = page.locator("#review-canvas")
            canvas.scroll_into_view_if_needed()
            px = gray_pixels(canvas.screenshot())
            assert (px > 30).mean() > 0.05 and px.std() > 20
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert f"http://{host}:{port}/sub-01/anat/image.nii.gz" in requests
    assert all(u.startswith((f"http://{host}:{port}/", "data:", "blob:")) for u in requests), (
        requests
    )
