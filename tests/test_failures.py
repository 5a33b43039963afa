import json

import pytest

from cmb.failures import (
    FAILURE_COLUMNS,
    InputDataError,
    collect_failures,
    main,
    read_record,
    run_stage,
    upstream_failure,
    write_failures_csv,
)


def _boom():
    raise InputDataError("/data/sub-02_swi.nii.gz: all voxels are zero\nsecond line")


def test_success_writes_ok_record_and_runs_func(tmp_path):
    out = tmp_path / "out.txt"
    rec = run_stage(
        "ingest",
        "02",
        "1",
        [out],
        tmp_path / "status.json",
        tmp_path / "log.txt",
        lambda: out.write_text("result"),
    )
    assert rec["status"] == "ok"
    assert out.read_text() == "result"
    on_disk = json.loads((tmp_path / "status.json").read_text())
    assert on_disk["status"] == "ok" and on_disk["participant_id"] == "sub-02"
    assert on_disk["session_id"] == "ses-1"


def test_failure_is_recorded_with_one_line_message_and_placeholders(tmp_path):
    outs = [tmp_path / "a" / "mag.nii.gz", tmp_path / "b.json"]
    outs[1].write_text("stale content")
    rec = run_stage(
        "ingest", "sub-02", None, outs, tmp_path / "f" / "status.json", "logs/x.log", _boom
    )
    assert rec["status"] == "failed"
    on_disk = json.loads((tmp_path / "f" / "status.json").read_text())
    assert on_disk["error_class"] == "InputDataError"
    assert on_disk["message"] == "/data/sub-02_swi.nii.gz: all voxels are zero | second line"
    assert on_disk["participant_id"] == "sub-02" and on_disk["session_id"] is None
    assert on_disk["log"] == "logs/x.log" and on_disk["stage"] == "ingest"
    assert on_disk["time"].endswith("Z")
    assert all(o.exists() and o.stat().st_size == 0 for o in outs)


def test_any_exception_class_is_caught(tmp_path):
    def bad():
        return 1 / 0

    rec = run_stage("detect", "01", None, [], tmp_path / "s.json", None, bad)
    assert rec["error_class"] == "ZeroDivisionError" and rec["message"] == "division by zero"


def test_keyboard_interrupt_is_not_swallowed(tmp_path):
    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage("detect", "01", None, [], tmp_path / "s.json", None, interrupt)
    assert not (tmp_path / "s.json").exists()


def test_upstream_failure_skips_and_propagates(tmp_path):
    run_stage("ingest", "02", None, [], tmp_path / "ingest.json", None, _boom)
    called = []
    out = tmp_path / "pre.nii.gz"
    rec = run_stage(
        "preprocess",
        "02",
        None,
        [out],
        tmp_path / "pre.json",
        None,
        lambda: called.append(1),
        upstream=[tmp_path / "ingest.json"],
    )
    assert called == [] and rec["status"] == "skipped" and out.stat().st_size == 0
    assert rec["message"].startswith("skipped: upstream stage ingest failed: /data/sub-02_swi")
    # a third stage keeps the root cause rather than nesting "skipped" messages
    rec3 = run_stage(
        "register",
        "02",
        None,
        [],
        tmp_path / "reg.json",
        None,
        lambda: None,
        upstream=[tmp_path / "pre.json"],
    )
    assert rec3["status"] == "skipped" and rec3["message"] == rec["message"]


def test_ok_or_missing_upstream_does_not_skip(tmp_path):
    run_stage("ingest", "01", None, [], tmp_path / "ingest.json", None, lambda: None)
    placeholder = tmp_path / "empty.json"
    placeholder.write_text("")
    assert (
        upstream_failure([tmp_path / "ingest.json", tmp_path / "missing.json", placeholder]) is None
    )
    ran = []
    rec = run_stage(
        "preprocess",
        "01",
        None,
        [],
        tmp_path / "p.json",
        None,
        lambda: ran.append(1),
        upstream=[tmp_path / "ingest.json"],
    )
    assert ran == [1] and rec["status"] == "ok"


def test_read_record_ignores_placeholders_and_garbage(tmp_path):
    (tmp_path / "e.json").write_text("")
    (tmp_path / "g.json").write_text("{not json")
    (tmp_path / "l.json").write_text("[1, 2]")
    assert [read_record(tmp_path / n) for n in ("e.json", "g.json", "l.json", "none.json")] == [
        None
    ] * 4


def test_collect_failures_table(tmp_path):
    run_stage("ingest", "03", None, [], tmp_path / "3.json", "l3", _boom)
    run_stage("ingest", "01", "2", [], tmp_path / "1.json", "l1", lambda: 1 / 0)
    run_stage("ingest", "02", None, [], tmp_path / "2.json", "l2", lambda: None)
    run_stage(
        "preprocess",
        "03",
        None,
        [],
        tmp_path / "3p.json",
        None,
        lambda: None,
        upstream=[tmp_path / "3.json"],
    )
    table = collect_failures(
        [tmp_path / n for n in ("3.json", "1.json", "2.json", "3p.json", "x.json")]
    )
    assert list(table.columns) == FAILURE_COLUMNS
    assert table["participant_id"].tolist() == ["sub-01", "sub-03", "sub-03"]
    assert table["stage"].tolist() == ["ingest", "ingest", "preprocess"]
    assert table["error_class"].tolist() == [
        "ZeroDivisionError",
        "InputDataError",
        "UpstreamFailure",
    ]
    assert table.loc[0, "session_id"] == "ses-2" and table.loc[0, "log"] == "l1"


def test_collect_failures_empty_has_columns(tmp_path):
    table = collect_failures([])
    assert list(table.columns) == FAILURE_COLUMNS and len(table) == 0


def test_failures_csv_cli(tmp_path):
    run_stage("ingest", "03", None, [], tmp_path / "3.json", None, _boom)
    assert (
        main(["collect", str(tmp_path / "cohort" / "failures.csv"), str(tmp_path / "3.json")]) == 0
    )
    lines = (tmp_path / "cohort" / "failures.csv").read_text().splitlines()
    assert lines[0] == ",".join(FAILURE_COLUMNS)
    assert lines[1].startswith("sub-03,,ingest,InputDataError,")
    again = write_failures_csv([tmp_path / "3.json"], tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_text() == (
        tmp_path / "cohort" / "failures.csv"
    ).read_text()
    assert len(again) == 1
