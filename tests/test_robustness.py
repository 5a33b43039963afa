"""The bad-input matrix and machine faults at the stage boundary (docs/robustness.md).

Every case builds a real broken or odd file and runs the ingest stage as the workflow
does (``cmb.ingest run --failure-record``), then checks what a statistician sees in
failures.csv: one line naming the file and the problem, or, where a fix is well
defined, an ``ok`` status with the fix in the report and the log. The faults (a writer
killed mid-write, a full disk) and the vendor phase sign are tested here too, without
Snakemake; tests/test_faults.py runs them through the workflow.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmb.atomic import atomic_path, save_nifti
from cmb.failures import InputDataError, ResourceError, is_resource_error, run_stage
from cmb.ingest import main as ingest_main
from cmb.ingest_plan import plan_inputs
from cmb.phase_convention import manufacturer_from_report, resolve_paramagnetic_phase

AFFINE = np.diag([2.0, 2.0, 2.5, 1.0])


# --------------------------------------------------------------------------- helpers


def _dataset(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text('{"Name": "robustness", "BIDSVersion": "1.9.0"}')
    (root / "participants.tsv").write_text("participant_id\nsub-01\n")
    return root


def _raw(path: Path, data, qform=None, sform=None, qcode=0, scode=0) -> Path:
    """A NIfTI with exactly the given qform/sform (nibabel's defaults bypassed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), None)
    if qform is not None or qcode:
        img.header.set_qform(qform, code=qcode)
    if sform is not None or scode:
        img.header.set_sform(sform, code=scode)
    nib.save(img, path)
    return path


def _noise(shape=(40, 40, 30), seed=0):
    return np.random.default_rng(seed).uniform(10, 100, shape)


def _ingest(
    tmp_path: Path, mag: Path, phase: Path | None = None, **extra
) -> tuple[dict, dict | None, Path]:
    """Run the ingest CLI as the workflow does; return (status record, report or None, log)."""
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "ingest.log"
    argv = [
        "run",
        "--subject",
        "01",
        "--kind",
        "gre_phase" if phase else "t2starw",
        "--mag",
        str(mag),
        "--out-mag",
        str(out / "mag.nii.gz"),
        "--out-json",
        str(out / "report.json"),
        "--failure-record",
        str(out / "status.json"),
        "--log",
        str(log),
    ]
    if phase is not None:
        argv += ["--phase", str(phase), "--out-phase", str(out / "phase.nii.gz")]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    assert ingest_main(argv) == 0  # a subject's bad data never fails the job
    status = json.loads((out / "status.json").read_text())
    text = (out / "report.json").read_text()
    return status, (json.loads(text) if text else None), log


def _assert_failed(status: dict, path: Path, *words: str) -> str:
    """A failed record whose one-line message starts with the file's path and says what is wrong."""
    assert status["status"] == "failed", status
    assert status["error_class"] == "InputDataError" and status["participant_id"] == "sub-01"
    msg = status["message"]
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


# --------------------------------------------------------------------------- bad-input matrix: errors


def _truncated(d: Path) -> Path:
    path = _raw(d / "sub-01_T2starw.nii.gz", _noise(), sform=AFFINE, scode=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _nan_heavy(d: Path) -> Path:
    data = _noise()
    data[:, :, :5] = np.nan
    data[0, 0, 10] = np.inf
    return _raw(d / "sub-01_T2starw.nii.gz", data, sform=AFFINE, scode=1)


def _annex_pointer(d: Path) -> Path:
    path = d / "sub-01_T2starw.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("/annex/objects/SHA256E-s123456--0123abcd.nii.gz\n")
    return path


def _broken_link(d: Path) -> Path:
    path = d / "sub-01_T2starw.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(
        "../../.git/annex/objects/Xy/Zw/SHA256E-s123456--0123abcd.nii.gz/"
        "SHA256E-s123456--0123abcd.nii.gz",
        path,
    )
    return path


ERROR_CASES = {
    "truncated .nii.gz": (_truncated, ["truncated or corrupt"]),
    "NaN/Inf beyond the limit": (_nan_heavy, ["NaN/Inf voxels", "limit"]),
    "all zero": (
        lambda d: _raw(d / "sub-01_T2starw.nii.gz", np.zeros((40, 40, 30)), sform=AFFINE, scode=1),
        ["all voxels are zero"],
    ),
    "constant": (
        lambda d: _raw(
            d / "sub-01_T2starw.nii.gz", np.full((40, 40, 30), 3.0), sform=AFFINE, scode=1
        ),
        ["constant image"],
    ),
    "unexpected 4D": (
        lambda d: _raw(d / "sub-01_T2starw.nii.gz", _noise((40, 40, 30, 3)), sform=AFFINE, scode=1),
        ["4D image with 3 volumes"],
    ),
    "2D image": (
        lambda d: _raw(d / "sub-01_T2starw.nii.gz", _noise((64, 64)), sform=AFFINE, scode=1),
        ["2D image"],
    ),
    "single slice": (
        lambda d: _raw(d / "sub-01_T2starw.nii.gz", _noise((64, 64, 1)), sform=AFFINE, scode=1),
        ["2D image"],
    ),
    "no sform, no qform": (
        lambda d: _raw(d / "sub-01_T2starw.nii.gz", _noise()),
        ["sform_code and qform_code are both 0"],
    ),
    "qform/sform of opposite handedness": (
        lambda d: _raw(
            d / "sub-01_T2starw.nii.gz",
            _noise(),
            qform=np.diag([-2.0, 2.0, 2.5, 1.0]),
            qcode=1,
            sform=AFFINE,
            scode=1,
        ),
        ["disagree in handedness"],
    ),
    "huge voxels": (
        lambda d: _raw(
            d / "sub-01_T2starw.nii.gz",
            _noise((40, 40, 12)),
            sform=np.diag([2.0, 2.0, 8.0, 1.0]),
            scode=1,
        ),
        ["larger than 5 mm"],
    ),
    "tiny field of view": (
        lambda d: _raw(d / "sub-01_T2starw.nii.gz", _noise((20, 20, 20)), sform=AFFINE, scode=1),
        ["partial field of view"],
    ),
    "empty file": (
        lambda d: (
            d.mkdir(parents=True, exist_ok=True),
            (d / "sub-01_T2starw.nii.gz").touch(),
            d / "sub-01_T2starw.nii.gz",
        )[-1],
        ["empty file"],
    ),
    "not a NIfTI": (
        lambda d: (
            d.mkdir(parents=True, exist_ok=True),
            (d / "sub-01_T2starw.nii.gz").write_bytes(gzip.compress(b"<html>" * 400)),
            d / "sub-01_T2starw.nii.gz",
        )[-1],
        ["cannot read NIfTI header"],
    ),
    "git-annex pointer (unlocked, not fetched)": (
        _annex_pointer,
        ["git-annex pointer", "datalad get"],
    ),
    "broken symlink (DataLad, not fetched)": (_broken_link, ["broken symlink", "datalad get"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_fails_the_subject_with_the_file_and_the_problem(case, tmp_path):
    build, words = ERROR_CASES[case]
    path = build(_dataset(tmp_path / "bids ü") / "sub-01" / "anat")
    status, report, log = _ingest(tmp_path, path)
    _assert_failed(status, path, *words)
    assert report is None  # the placeholder is empty: never read as a result
    assert (tmp_path / "out" / "mag.nii.gz").stat().st_size == 0
    assert status["log"] == str(log)


def test_mag_and_phase_on_different_grids(tmp_path):
    anat = _dataset(tmp_path / "bids") / "sub-01" / "swi"
    mag = _raw(anat / "sub-01_part-mag_GRE.nii.gz", _noise(), sform=AFFINE, scode=1)
    shifted = AFFINE.copy()
    shifted[:3, 3] = [4.0, 0, 0]
    phase = _raw(
        anat / "sub-01_part-phase_GRE.nii.gz",
        np.random.default_rng(1).uniform(-np.pi, np.pi, (40, 40, 30)),
        sform=shifted,
        scode=1,
    )
    status, _, _ = _ingest(tmp_path, mag, phase)
    _assert_failed(status, phase, "grid differs from", mag.name, "4 mm")
    small = _raw(
        anat / "sub-01_part-phase_GRE.nii.gz",
        np.random.default_rng(1).uniform(-np.pi, np.pi, (40, 40, 28)),
        sform=AFFINE,
        scode=1,
    )
    status, _, _ = _ingest(tmp_path, mag, small)
    _assert_failed(status, small, "grid differs from", "shape (40, 40, 28)")


def test_phase_in_unknown_units_names_the_file(tmp_path):
    anat = _dataset(tmp_path / "bids") / "sub-01" / "swi"
    mag = _raw(anat / "sub-01_part-mag_GRE.nii.gz", _noise(), sform=AFFINE, scode=1)
    phase = _raw(
        anat / "sub-01_part-phase_GRE.nii.gz",
        np.random.default_rng(1).uniform(3, 70, (40, 40, 30)),
        sform=AFFINE,
        scode=1,
    )
    status, _, _ = _ingest(tmp_path, mag, phase)
    _assert_failed(status, phase, "cannot tell the units")


# --------------------------------------------------------------------------- bad-input matrix: automatic fixes


def _fix_nan(d):
    data = _noise()
    data[1, 2, 3] = np.nan
    data[4, 5, 6] = -np.inf
    return _raw(d / "sub-01_T2starw.nii.gz", data, sform=AFFINE, scode=1), "2 NaN/Inf voxels"


def _fix_qform(d):
    shifted = AFFINE.copy()
    shifted[:3, 3] = [1.5, 0, 0]
    return (
        _raw(d / "sub-01_T2starw.nii.gz", _noise(), qform=shifted, qcode=1, sform=AFFINE, scode=2),
        "qform and sform differ by up to 1.5 mm; the sform is used",
    )


def _fix_squeeze(d):
    return (
        _raw(d / "sub-01_T2starw.nii.gz", _noise((40, 40, 30, 1)), sform=AFFINE, scode=1),
        "singleton 4th dimension squeezed to 3D",
    )


FIX_CASES = {
    "few NaN/Inf voxels": _fix_nan,
    "qform and sform differ slightly": _fix_qform,
    "4D with one volume": _fix_squeeze,
}


@pytest.mark.parametrize("case", list(FIX_CASES))
def test_well_defined_fix_is_applied_and_logged(case, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    path, fix = FIX_CASES[case](_dataset(tmp_path / "bids") / "sub-01" / "anat")
    status, report, _ = _ingest(tmp_path, path)
    assert status["status"] == "ok", status
    assert f"{path}: {fix}" in "\n".join(report["fixes"])
    assert any(str(path) in r.getMessage() and fix in r.getMessage() for r in caplog.records)
    out = nib.load(tmp_path / "out" / "mag.nii.gz")
    assert out.ndim == 3 and np.isfinite(np.asanyarray(out.dataobj)).all()
    np.testing.assert_array_equal(out.affine, AFFINE)  # the sform wins


PHASES = {  # stored values from radians; expected detected units
    "radians": (lambda r: r, "radians"),
    "degrees": (np.degrees, "degrees"),
    "raw integers 0..4095": (
        lambda r: np.round((r + np.pi) / (2 * np.pi) * 4096).clip(0, 4095),
        "integer",
    ),
    "raw integers -4096..4095": (lambda r: np.round(r / np.pi * 4096).clip(-4096, 4095), "integer"),
}


@pytest.mark.parametrize("stored", list(PHASES))
def test_phase_units_are_rescaled_to_radians_and_logged(stored, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    encode, units = PHASES[stored]
    rad = np.random.default_rng(2).uniform(-np.pi, np.pi, (40, 40, 30))
    anat = _dataset(tmp_path / "bids") / "sub-01" / "swi"
    mag = _raw(anat / "sub-01_part-mag_GRE.nii.gz", _noise(), sform=AFFINE, scode=1)
    phase = _raw(anat / "sub-01_part-phase_GRE.nii.gz", encode(rad), sform=AFFINE, scode=1)
    status, report, _ = _ingest(tmp_path, mag, phase)
    assert status["status"] == "ok", status
    assert report["phase_units"]["units"] == units
    assert any(f.startswith(f"{phase}: ") for f in report["fixes"])
    assert any(str(phase) in r.getMessage() for r in caplog.records)
    out = nib.load(tmp_path / "out" / "phase.nii.gz").get_fdata(dtype=np.float32)
    assert np.abs(np.angle(np.exp(1j * (out - rad)))).max() < 2 * np.pi / 4096 + 1e-4


# --------------------------------------------------------------------------- dataset-level oddities


def test_missing_participants_tsv_and_dataset_description_are_warnings(
    tmp_path, make_nifti, caplog
):
    root = tmp_path / "bids"
    make_nifti(root / "sub-01" / "anat" / "sub-01_T2starw.nii.gz")
    make_nifti(root / "sub-02" / "anat" / "sub-02_T2starw.nii.gz")
    with caplog.at_level(logging.WARNING):
        records = plan_inputs(root, tmp_path / "db")
    assert [r.subject for r in records] == ["01", "02"]  # subjects from the sub-* folders
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{root}: no dataset_description.json" in text
    assert f"{root}: no participants.tsv; subjects are taken from the sub-* folders" in text


def test_unreadable_participants_tsv_is_a_warning(tmp_path, make_nifti, caplog):
    root = _dataset(tmp_path / "bids")
    (root / "participants.tsv").write_text("subject\tage\n01\t70\n")  # no participant_id column
    make_nifti(root / "sub-01" / "anat" / "sub-01_T2starw.nii.gz")
    with caplog.at_level(logging.WARNING):
        (rec,) = plan_inputs(root, tmp_path / "db")
    assert rec.kind == "t2starw"
    assert any(
        "participants.tsv: unreadable participants.tsv ignored" in r.getMessage()
        for r in caplog.records
    )


def test_duplicate_runs_and_extensions(tmp_path, make_nifti):
    anat = _dataset(tmp_path / "bids") / "sub-01" / "anat"
    for run in (1, 2, 10):
        make_nifti(anat / f"sub-01_run-{run}_T2starw.nii.gz", seed=run)
    make_nifti(anat / "sub-01_run-10_T2starw.nii", seed=99)  # the same scan stored twice
    (rec,) = plan_inputs(tmp_path / "bids", tmp_path / "db")
    assert rec.magnitude == (str(anat / "sub-01_run-10_T2starw.nii.gz"),)
    assert "ties to the highest run" in rec.reason
    for run in (1, 2):
        assert f"sub-01_run-{run}_T2starw.nii.gz" in rec.reason  # the other candidates are named
    assert [a["magnitude"] for a in rec.alternatives] == [
        [str(anat / f"sub-01_run-{r}_T2starw.nii.gz")] for r in (10, 2, 1)
    ]  # .nii.gz over .nii


def _annexed(root: Path, rel: str, content: bytes | None) -> Path:
    """A DataLad/git-annex file: a relative symlink into .git/annex/objects (``None``: not fetched)."""
    key = "SHA256E-s%d--%s.nii.gz" % (len(content or b""), hashlib.sha256(rel.encode()).hexdigest())
    obj = root / ".git" / "annex" / "objects" / key[-6:-4] / key[-4:-2] / key / key
    if content is not None:
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(content)
    link = root / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(obj, link.parent), link)
    return link


def test_datalad_dataset_fetched_and_unfetched(tmp_path, make_nifti):
    root = _dataset(tmp_path / "bids")
    good = make_nifti(tmp_path / "scratch" / "good.nii.gz").read_bytes()
    ok = _annexed(root, "sub-01/anat/sub-01_T2starw.nii.gz", good)
    missing = _annexed(root, "sub-02/anat/sub-02_T2starw.nii.gz", None)
    records = {r.subject: r for r in plan_inputs(root, tmp_path / "db")}
    assert records["01"].magnitude == (str(ok),) and records["02"].magnitude == (str(missing),)
    status, report, _ = _ingest(tmp_path / "a", ok)
    assert (
        status["status"] == "ok"
        and report["inputs"]["magnitude"][0]["sha256"] == hashlib.sha256(good).hexdigest()
    )
    status, _, _ = _ingest(tmp_path / "b", missing)
    _assert_failed(status, missing, "broken symlink", "DataLad", "datalad get")


@contextlib.contextmanager
def read_only_tree(root: Path):
    """``chmod -R a-w`` the tree and, when root (who ignores permissions), bind-mount it read-only."""
    modes = {p: p.stat().st_mode for p in [root, *root.rglob("*")] if not p.is_symlink()}
    for p, mode in modes.items():
        os.chmod(p, mode & ~0o222)
    mounted = False
    if os.geteuid() == 0:
        mounted = (
            subprocess.run(
                ["mount", "--bind", str(root), str(root)], capture_output=True
            ).returncode
            == 0
        )
        if (
            mounted
            and subprocess.run(
                ["mount", "-o", "remount,bind,ro", str(root)], capture_output=True
            ).returncode
            != 0
        ):
            subprocess.run(["umount", str(root)], capture_output=True)
            mounted = False
    try:
        yield mounted or os.geteuid() != 0
    finally:
        if mounted:
            subprocess.run(["umount", str(root)], check=True)
        for p, mode in modes.items():
            os.chmod(p, mode)


def _checksums(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() + f":{p.stat().st_mtime_ns}"
        else:
            out[rel] = "dir"
    return out


def test_read_only_input_is_planned_and_ingested_and_never_modified(tmp_path, make_nifti):
    root = _dataset(tmp_path / "raw data ü")
    make_nifti(root / "sub-01" / "swi" / "sub-01_part-mag_GRE.nii.gz")
    make_nifti(root / "sub-01" / "swi" / "sub-01_part-phase_GRE.nii.gz", kind="phase")
    (root / "sub-01" / "swi" / "sub-01_part-mag_GRE.json").write_text('{"Manufacturer": "Siemens"}')
    before = _checksums(root)
    with read_only_tree(root) as enforced:
        if enforced:  # writes really fail, so a write attempt would show as an error
            with pytest.raises(OSError):
                (root / "probe").write_text("x")
        (rec,) = plan_inputs(root, tmp_path / "db")
        status, report, _ = _ingest(
            tmp_path, Path(rec.magnitude[0]), Path(rec.phase[0]), bids_dir=root
        )
    assert status["status"] == "ok", status
    assert report["metadata"]["Manufacturer"] == "Siemens"
    assert _checksums(root) == before


# --------------------------------------------------------------------------- faults: killed writer


def test_writer_killed_mid_write_leaves_no_file_and_its_leftover_is_removed(tmp_path):
    target = tmp_path / "out" / "sub-01_desc-preproc_swi.nii.gz"
    code = (
        "import sys, time\nfrom cmb.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half a NIfTI')\n    print('writing', flush=True)\n    time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()  # nothing under the final name
    (leftover,) = target.parent.glob(".sub-01_desc-preproc_swi.nii.gz.*.tmp.nii.gz")
    other = target.parent / ".sub-01_desc-preproc_swi.nii.gz.json.abc.tmp.json"  # not this target's
    other.write_text("{}")
    save_nifti(nib.Nifti1Image(_noise().astype(np.float32), AFFINE), target)  # the rerun
    assert nib.load(target).shape == (40, 40, 30)
    assert not leftover.exists() and other.exists()


def test_failed_write_removes_its_temporary_file(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- faults: full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (as root), else a skip saying why."""
    mnt = tmp_path / "small disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a small tmpfs needs root (mount -t tmpfs); the full-disk test cannot run")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _big(shape=(128, 128, 64)):
    return nib.Nifti1Image(np.random.default_rng(0).random(shape, dtype=np.float32), AFFINE)


def test_full_disk_raises_and_leaves_no_file(small_disk):
    target = small_disk / "sub-01_desc-preproc_swi.nii.gz"
    with pytest.raises(OSError) as err:
        save_nifti(_big(), target)
    assert err.value.errno == errno.ENOSPC
    assert list(small_disk.iterdir()) == []  # neither the target nor a temporary file


def test_full_disk_fails_the_job_cleanly_instead_of_a_soft_failure(tmp_path, small_disk):
    """ENOSPC is not the subject's fault: no status record (so Snakemake reruns the job), exit 1,
    one line on stderr naming the cause, and nothing left on the disk."""
    anat = _dataset(tmp_path / "bids") / "sub-01" / "anat"
    anat.mkdir(parents=True)
    src = anat / "sub-01_T2starw.nii.gz"
    nib.save(_big(), src)
    cmd = [
        sys.executable,
        "-m",
        "cmb.ingest",
        "run",
        "--subject",
        "01",
        "--kind",
        "t2starw",
        "--mag",
        str(src),
        "--out-mag",
        str(small_disk / "mag.nii.gz"),
        "--out-json",
        str(small_disk / "report.json"),
        "--failure-record",
        str(small_disk / "status.json"),
        "--log",
        str(tmp_path / "log.txt"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ingest sub-01: OSError: [Errno 28] No space left on device"), (
        last
    )
    assert list(small_disk.iterdir()) == []


def test_resource_errors_are_raised_not_recorded(tmp_path):
    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "/out/x.nii.gz")

    with pytest.raises(ResourceError, match="No space left on device"):
        run_stage(
            "preprocess", "01", None, [tmp_path / "o.nii.gz"], tmp_path / "s.json", None, full
        )
    assert list(tmp_path.iterdir()) == []  # no record, no placeholder
    # an exception rebuilt from text (a subprocess's last line): the class name and message only
    wrapped = type("OSError", (RuntimeError,), {})(
        "[Errno 28] No space left on device: '/out/x.nii.gz'"
    )
    assert is_resource_error(wrapped) and is_resource_error(MemoryError())
    assert not is_resource_error(InputDataError("/in/sub-01_swi.nii.gz: all voxels are zero"))
    assert not is_resource_error(FileNotFoundError(errno.ENOENT, "No such file"))


# --------------------------------------------------------------------------- vendor phase sign


@pytest.mark.parametrize(
    ("manufacturer", "sign"),
    [
        ("Siemens", "negative"),
        ("SIEMENS", "negative"),
        ("Siemens Healthineers", "negative"),
        ("Philips", "negative"),
        ("Philips Medical Systems", "negative"),
        ("GE MEDICAL SYSTEMS", "positive"),
        ("GE", "positive"),
        ("General Electric", "positive"),
    ],
)
def test_auto_phase_sign_by_manufacturer(manufacturer, sign):
    decision = resolve_paramagnetic_phase("auto", manufacturer, "r.json")
    assert decision.paramagnetic_phase == sign and decision.source == "vendor"


@pytest.mark.parametrize("manufacturer", [None, "", "Canon Medical Systems", "GEM imaging"])
def test_auto_phase_sign_of_unknown_vendor_is_an_error_naming_the_file(manufacturer):
    with pytest.raises(
        InputDataError, match=r"^sub-01_ingested\.json: .*set preprocess\.paramagnetic_phase"
    ):
        resolve_paramagnetic_phase("auto", manufacturer, "sub-01_ingested.json")


def test_explicit_phase_sign_overrides_the_vendor():
    decision = resolve_paramagnetic_phase("positive", "Siemens")
    assert (decision.paramagnetic_phase, decision.source) == ("positive", "configuration")
    assert decision.reason.startswith("set to positive in the configuration")
    with pytest.raises(ValueError):
        resolve_paramagnetic_phase("up", "Siemens")


def test_ingest_report_carries_the_manufacturer_for_the_phase_sign(tmp_path):
    anat = _dataset(tmp_path / "bids") / "sub-01" / "swi"
    mag = _raw(anat / "sub-01_part-mag_GRE.nii.gz", _noise(), sform=AFFINE, scode=1)
    phase = _raw(
        anat / "sub-01_part-phase_GRE.nii.gz",
        np.random.default_rng(1).uniform(-np.pi, np.pi, (40, 40, 30)),
        sform=AFFINE,
        scode=1,
    )
    (anat.parent.parent / "GRE.json").write_text(
        '{"Manufacturer": "Philips Medical Systems"}'
    )  # inherited
    status, _, _ = _ingest(tmp_path, mag, phase, bids_dir=anat.parent.parent)
    assert status["status"] == "ok"
    report = tmp_path / "out" / "report.json"
    assert manufacturer_from_report(report) == "Philips Medical Systems"
    assert (
        resolve_paramagnetic_phase(
            "auto", manufacturer_from_report(report), report
        ).paramagnetic_phase
        == "negative"
    )
    report.write_text("")  # an upstream placeholder is not a report
    with pytest.raises(InputDataError, match="cannot read the ingest report"):
        manufacturer_from_report(report)


def test_preprocess_auto_sign_flips_a_siemens_phase(tmp_path):
    """End to end through cmb.preprocess: the same raw phase gives opposite high-pass phases
    for a Siemens and a GE report; an unknown vendor on a scan without veins (the data cannot
    decide) is refused with the file and the setting, and writes nothing."""
    from cmb.preprocess import preprocess_subject

    shape = (48, 48, 32)
    g = np.indices(shape).astype(float)
    head = (((g[0] - 24) / 20) ** 2 + ((g[1] - 24) / 20) ** 2 + ((g[2] - 16) / 13) ** 2) < 1
    mag = nib.Nifti1Image(
        np.where(head, 100.0, 1.0).astype(np.float32) + _noise(shape).astype(np.float32),
        np.diag([3.0, 3.0, 3.0, 1.0]),
    )
    bleed = np.exp(-(((g[0] - 24) ** 2 + (g[1] - 30) ** 2 + (g[2] - 16) ** 2) / 2.0))
    phase = nib.Nifti1Image((0.8 * bleed).astype(np.float32), mag.affine)  # a positive raw shift
    nib.save(mag, tmp_path / "mag.nii.gz")
    nib.save(phase, tmp_path / "phase.nii.gz")
    values = {}
    for vendor in ("SIEMENS", "GE MEDICAL SYSTEMS", "Hitachi"):
        report = tmp_path / f"{vendor}.json"
        report.write_text(json.dumps({"metadata": {"Manufacturer": vendor}}))
        out = tmp_path / vendor
        out.mkdir()
        kw = dict(
            paramagnetic_phase="auto", ingest_report=report, n4_iterations=(5,), mask_work_mm=3.0
        )
        if vendor == "Hitachi":
            with pytest.raises(
                InputDataError,
                match=r"Hitachi.json: Manufacturer 'Hitachi' has no known phase "
                r"sign, and the veins of .*phase.nii.gz do not tell it either"
                r".*set preprocess\.paramagnetic_phase",
            ):
                preprocess_subject(
                    tmp_path / "mag.nii.gz",
                    tmp_path / "phase.nii.gz",
                    out / "m.nii.gz",
                    out / "mask.nii.gz",
                    out / "p.nii.gz",
                    **kw,
                )
            assert list(out.iterdir()) == []
            continue
        rep = preprocess_subject(
            tmp_path / "mag.nii.gz",
            tmp_path / "phase.nii.gz",
            out / "m.nii.gz",
            out / "mask.nii.gz",
            out / "p.nii.gz",
            **kw,
        )
        assert rep["phase"]["InputParamagneticPhaseSetting"] == "auto"
        assert vendor in rep["phase"]["InputParamagneticPhaseReason"]
        convention = rep["phase"][
            "PhaseConvention"
        ]  # no veins here: the vendor rule, flagged unconfident
        assert convention["source"] == "vendor" and convention["agreement"] == "unconfident"
        assert rep["phase"]["QCFlags"] == ["phase_convention_unconfident"]
        values[vendor] = float(nib.load(out / "p.nii.gz").get_fdata()[24, 30, 16])
    assert values["GE MEDICAL SYSTEMS"] > 0.1 and values["SIEMENS"] == pytest.approx(
        -values["GE MEDICAL SYSTEMS"]
    )


# --------------------------------------------------------------------------- failure isolation


def test_every_profile_keeps_going_and_reruns_incomplete_jobs():
    import yaml

    profiles = sorted((Path(__file__).resolve().parents[1] / "profiles").glob("*/config.yaml"))
    assert profiles
    for path in profiles:
        cfg = yaml.safe_load(path.read_text())
        assert cfg.get("keep-going") is True, path
        assert cfg.get("rerun-incomplete") is True, path
