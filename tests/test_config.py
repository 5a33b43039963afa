"""The config schema is the one source of defaults; stages take config sections; names come from cmb.layout."""

import argparse
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakebids import bids, set_bids_spec

from cmb import layout
from cmb.config import ConfigError, add_config_sections, config_sections_json, defaults, resolve
from cmb.failures import read_record, run_module_stage

REPO = Path(__file__).resolve().parents[1]

# every stage command line that takes config sections, and the sections it takes
STAGE_PARSERS = {
    "cmb.preprocess": ("preprocess",),
    "cmb.localize": ("localize", "mars"),
    "cmb.detect.__main__": ("detection",),
    "cmb.registration.cli": ("register", "mars"),
}


def _parser(module):
    mod = importlib.import_module(module)
    build = getattr(mod, "build_parser", None) or getattr(mod, "_parser")
    return build()


def test_config_yaml_holds_no_default_of_its_own():
    """config.yaml sets the run's folders; every other value would be a second copy of a default."""
    own = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    schema_defaults = defaults()
    copies = {k: v for k, v in own.items() if k in schema_defaults}
    assert not copies, f"config.yaml repeats schema defaults: {sorted(copies)}"


@pytest.mark.parametrize("module,sections", STAGE_PARSERS.items())
def test_stage_command_lines_default_to_the_schema(module, sections):
    """With no option given, every setting a stage reads is the schema's default."""
    required = {
        "cmb.preprocess": ["--mag", "m", "--out-mag", "o", "--out-mask", "k"],
        "cmb.localize": [
            "--subject",
            "01",
            "--candidates",
            "c",
            "--candidates-dseg",
            "d",
            "--input-image",
            "i",
            "--out-table",
            "t",
            "--out-json",
            "j",
        ],
        "cmb.detect.__main__": [
            "--image",
            "i",
            "--mask",
            "m",
            "--out-table",
            "t",
            "--out-sidecar",
            "s",
            "--out-dseg",
            "d",
            "--out-prob",
            "p",
        ],
        "cmb.registration.cli": ["--image", "i", "--mask", "m", "--out-prefix", "x"],
    }[module]
    args = vars(_parser(module).parse_args(required))
    for section in sections:
        for key, value in defaults(section).items():
            assert args[key] == value, (
                f"{module}: {section}.{key} is {args[key]!r}, the schema says {value!r}"
            )


def test_a_config_section_reaches_the_stage_and_later_options_win():
    p = _parser("cmb.preprocess")
    base = ["--mag", "m", "--out-mag", "o", "--out-mask", "k"]
    section = json.dumps({"preprocess": {"n4_iterations": [20, 10], "normalize": "p99"}})
    args = p.parse_args(base + ["--config-sections", section])
    assert (args.n4_iterations, args.normalize, args.highpass_sigma_mm) == ([20, 10], "p99", 4.0)
    args = p.parse_args(base + ["--config-sections", section, "--normalize", "median"])
    assert args.normalize == "median"


def test_a_bad_config_section_is_refused_with_the_key(capsys):
    p = add_config_sections(argparse.ArgumentParser(prog="stage"), "register")
    with pytest.raises(SystemExit):
        p.parse_args(["--config-sections", '{"register": {"step_mm": "fine"}}'])
    err = capsys.readouterr().err
    assert "register.step_mm" in err and "config.schema.yaml" in err
    with pytest.raises(SystemExit):
        p.parse_args(["--config-sections", '{"detection": {}}'])
    assert "register" in capsys.readouterr().err


def test_resolve_types_fills_and_refuses():
    cfg = resolve(
        {
            "bids_dir": "in",
            "output_dir": "out",
            "detection": {"use_gpu": "false", "threshold": "0.4"},
            "participant_label": [2],
        },
        dataset_labels=lambda: ["01", "02"],
    )
    assert cfg["detection"]["use_gpu"] is False and cfg["detection"]["threshold"] == 0.4
    assert cfg["participant_label"] == ["02"] and cfg["ingest"]["min_fov_mm"] == 60.0
    with pytest.raises(ConfigError, match=r"\(ingest\): Additional properties .*'min_fov'"):
        resolve({"bids_dir": "in", "output_dir": "out", "ingest": {"min_fov": 1}})
    with pytest.raises(ConfigError, match="matches several subjects"):
        resolve(
            {"bids_dir": "in", "output_dir": "out", "participant_label": [2]},
            dataset_labels=lambda: ["2", "02"],
        )
    assert json.loads(config_sections_json(cfg, "register"))["register"]["syn"] is True


def test_layout_names_are_the_names_bids_writes():
    set_bids_spec("v0_15_0")
    for name in layout.DERIVATIVES:
        ents = layout.entities(name)
        folder = layout.datatype(name)
        expected = bids(root="out/sub-01", datatype=folder or None, prefix="sub-01", **ents)
        path = f"out/sub-01/{folder + '/' if folder else ''}{layout.file_name('sub-01', name)}"
        assert path == expected, name
        assert (
            layout.sibling(f"out/sub-01/anat/{layout.file_name('sub-01', 'mars')}", name).as_posix()
            == expected
        )
    xfm = layout.transform("SWI", "MNI152NLin2009cAsym", "mat")
    assert layout.file_name("sub-01", xfm) == Path(bids(root="r", prefix="sub-01", **xfm)).name


def test_the_rules_are_thin():
    common = (REPO / "rules" / "common.smk").read_text()
    assert len(common.splitlines()) <= 200
    rules = "".join(p.read_text() for p in sorted((REPO / "rules").glob("*.smk")))
    assert "os.environ[" not in rules.replace(
        'os.environ["PYTHONPATH"]', ""
    )  # no program text in the environment
    assert "python -c" not in rules
    snakefile = (REPO / "Snakefile").read_text()
    assert (
        "workflow.scheduler" not in snakefile and "_limiter" not in snakefile
    )  # Snakemake's public API only
    profile = yaml.safe_load((REPO / "profiles" / "local" / "config.yaml").read_text())
    assert (
        profile["max-jobs-per-timespan"] == "100000/30s"
    )  # the scheduler's cost at scale (benchmarks.md)
    # options reach the stages as config sections: no rule spells out a setting as a flag
    for flag in (
        "--highpass-sigma-mm",
        "--step-mm",
        "--batch-size",
        "--min-fov-mm",
        "--juxtacortical-mm",
        "--min-parenchyma-fraction",
    ):
        assert flag not in rules, flag


def _stage_module(tmp_path, body):
    pkg = tmp_path / "stagepkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "broken.py").write_text(body)
    sys.path.insert(0, str(tmp_path))
    return "stagepkg.broken"


def test_a_stage_run_in_process_records_its_own_exception(tmp_path):
    module = _stage_module(
        tmp_path,
        "import sys\n"
        "class PhaseUnitsError(ValueError):\n    pass\n"
        "if __name__ == '__main__':\n"
        "    raise PhaseUnitsError(sys.argv[1] + ': values span 7 rad')\n",
    )
    try:
        out = tmp_path / "out.nii.gz"
        rec = run_module_stage(
            "preprocess",
            "01",
            None,
            [str(out)],
            str(tmp_path / "rec.json"),
            None,
            module,
            ["phase.nii.gz"],
        )
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)
    assert rec["status"] == "failed" and rec["error_class"] == "PhaseUnitsError"
    assert rec["message"] == "phase.nii.gz: values span 7 rad"
    assert out.exists() and out.stat().st_size == 0
    assert read_record(tmp_path / "rec.json") == rec


def test_the_stage_runner_command_line(tmp_path):
    """``python -m cmb.failures run``: a usage error of the stage is its record's message; exit 0."""
    rec = tmp_path / "rec.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmb.failures",
            "run",
            "detect",
            "--subject",
            "01",
            "--record",
            str(rec),
            "--outputs",
            str(tmp_path / "t.tsv"),
            "--",
            "cmb.detect",
            "--image",
            "x.nii.gz",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(rec.read_text())
    assert record["status"] == "failed" and re.search(r"required: --mask", record["message"]), (
        record
    )
