"""cmb profile install: the SLURM profile rendered with the cluster's names, where Snakemake looks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cmb import cluster_profile as cp
from cmb.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "profiles" / "slurm" / "config.yaml"


def load(path):
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


# ------------------------------------------------------------------ the profile itself


def test_slurm_profile_settings():
    cfg = load(SLURM)
    assert cfg["executor"] == "slurm"
    for key in ("jobs", "latency-wait", "retries"):
        assert isinstance(cfg[key], int) and cfg[key] > 0
    assert cfg["keep-going"] is True and cfg["rerun-incomplete"] is True
    # without slurmdbd, sacct fails and the plugin waits forever
    assert cfg["slurm-status-command"] == "squeue"
    defaults = cfg["default-resources"]
    assert {"mem_mb", "runtime"} <= set(defaults)
    # a cpus_per_task default would override every rule's threads
    assert "cpus_per_task" not in defaults
    assert (
        "slurm_partition" not in defaults and "slurm_account" not in defaults
    )  # placeholders stay comments
    detect = cfg["set-resources"]["detect_cmb"]
    assert detect["cpus_per_gpu"] >= 1 and "cpus_per_task" not in detect
    # cheap per-subject CPU stages grouped; detection (GPU, maybe another partition) never
    groups = cfg["groups"]
    assert {
        groups[r]
        for r in ("ingest_swi_phase", "preprocess_swi_phase", "register_to_mni", "plot_qc")
    } == {"subject"}
    assert {groups[r] for r in ("localize_cmb", "report_subject")} == {"subject_post"}
    assert "detect_cmb" not in groups
    assert cfg["group-components"] == {"subject": 1, "subject_post": 1}


@pytest.mark.parametrize("profile", ["slurm", "slurm-gres"])
def test_slurm_extra_carries_no_plugin_managed_option(profile):
    """Plugin 2.x rejects --gres, --gpus, --mem, --time, --partition, --account, -c in slurm_extra."""
    path = REPO / "profiles" / profile / "config.yaml"
    if not path.exists():
        pytest.skip(f"no profiles/{profile}")
    cfg = load(path)
    extras = [str(v.get("slurm_extra", "")) for v in (cfg.get("set-resources") or {}).values()]
    extras.append(str((cfg.get("default-resources") or {}).get("slurm_extra", "")))
    for extra in extras:
        for flag in (
            "--gres",
            "--gpus",
            "--mem",
            "--time",
            "--partition",
            "--account",
            "-c ",
            "--cpus",
        ):
            assert flag not in extra, (profile, extra)


def test_gres_variant_asks_gres_not_gpus():
    path = REPO / "profiles" / "slurm-gres" / "config.yaml"
    if not path.exists():
        pytest.skip("no profiles/slurm-gres")
    cfg = load(path)
    detect = cfg["set-resources"]["detect_cmb"]
    assert detect["gres"] == "gpu:1"
    assert detect["gpu"] == 0  # the rule's gpu=1 would add --gpus=1 as well
    assert {k: v for k, v in cfg.items() if k not in ("set-resources",)} == {
        k: v for k, v in load(SLURM).items() if k not in ("set-resources",)
    }


def test_snakemake_reads_the_profile(tmp_path):
    """Snakemake's own profile parser accepts the file (dict forms of resources and groups)."""
    from snakemake.profiles import ProfileConfigFileParser

    with open(SLURM, encoding="utf-8") as f:
        parsed = ProfileConfigFileParser().parse(f)
    assert "set-resources" in parsed and any(
        s.startswith("detect_cmb:cpus_per_gpu=") for s in parsed["set-resources"]
    )
    assert any(s.startswith("register_to_mni=") for s in parsed["groups"])


# ------------------------------------------------------------------ rendering


def test_render_fills_placeholders_and_keeps_comments():
    text = SLURM.read_text(encoding="utf-8")
    out = cp.render_profile(
        text,
        cp.ProfileSettings(
            partition="cpu",
            account="123456",
            gpu_partition="gpu",
            gpu_model="a100",
            status_command="sacct",
        ),
    )
    cfg = yaml.safe_load(out)
    assert cfg["default-resources"]["slurm_partition"] == "cpu"
    assert cfg["default-resources"]["slurm_account"] == "123456"  # text, not the integer 123456
    assert cfg["set-resources"]["detect_cmb"]["slurm_partition"] == "gpu"
    assert cfg["set-resources"]["detect_cmb"]["gpu_model"] == "a100"
    assert cfg["slurm-status-command"] == "sacct"
    assert out.count("\n#") == text.count("\n#")  # top-level comments kept
    assert len(out.splitlines()) == len(text.splitlines())


def test_render_without_settings_is_the_profile():
    text = SLURM.read_text(encoding="utf-8")
    assert cp.render_profile(text, cp.ProfileSettings()) == text


@pytest.mark.parametrize(
    "field,value",
    [
        ("partition", "a b"),
        ("account", "x;rm -rf /"),
        ("partition", ""),
        ("gpu_model", "a100:2"),
        ("account", "'lab'"),
        ("status_command", "sinfo"),
    ],
)
def test_render_rejects_bad_values(field, value):
    with pytest.raises(cp.ProfileError):
        cp.render_profile(SLURM.read_text(encoding="utf-8"), cp.ProfileSettings(**{field: value}))


def test_render_needs_each_placeholder_once():
    text = SLURM.read_text(encoding="utf-8").replace(
        "# slurm_account: ACCOUNT", "# no account here"
    )
    with pytest.raises(cp.ProfileError, match="slurm_account"):
        cp.render_profile(text, cp.ProfileSettings(account="lab"))


def test_render_gres_model():
    path = REPO / "profiles" / "slurm-gres" / "config.yaml"
    if not path.exists():
        pytest.skip("no profiles/slurm-gres")
    out = cp.render_profile(path.read_text(encoding="utf-8"), cp.ProfileSettings(gpu_model="v100"))
    assert yaml.safe_load(out)["set-resources"]["detect_cmb"]["gres"] == "gpu:v100:1"


# ------------------------------------------------------------------ installing


def test_user_profile_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    if sys.platform.startswith("linux"):
        assert cp.user_profile_dir() == tmp_path / "cfg" / "snakemake"
    import snakemake.common as sc
    from snakemake.common import get_appdirs

    monkeypatch.setattr(sc, "APPDIRS", None)
    assert cp.user_profile_dir() == Path(get_appdirs().user_config_dir)


def test_install_then_unchanged_then_refuse_then_force(tmp_path):
    s = cp.ProfileSettings(partition="cpu", account="lab")
    target, what = cp.install_profile("slurm", s, dest=tmp_path)
    assert (what, target) == ("installed", tmp_path / "slurm" / "config.yaml")
    assert load(target)["default-resources"]["slurm_account"] == "lab"
    assert cp.install_profile("slurm", s, dest=tmp_path)[1] == "unchanged"
    other = cp.ProfileSettings(partition="long", account="lab")
    with pytest.raises(cp.ProfileError, match="--force"):
        cp.install_profile("slurm", other, dest=tmp_path)
    assert load(target)["default-resources"]["slurm_partition"] == "cpu"  # untouched
    assert cp.install_profile("slurm", other, dest=tmp_path, force=True)[1] == "replaced"
    assert load(target)["default-resources"]["slurm_partition"] == "long"
    assert sorted(p.name for p in target.parent.iterdir()) == ["config.yaml"]  # no temporary left


def test_install_under_another_name_and_unknown_profile(tmp_path):
    target, _ = cp.install_profile(
        "slurm", cp.ProfileSettings(partition="gpu"), dest=tmp_path, name="slurm-gpu"
    )
    assert target == tmp_path / "slurm-gpu" / "config.yaml"
    with pytest.raises(cp.ProfileError, match="available"):
        cp.install_profile("pbs", cp.ProfileSettings(), dest=tmp_path)
    with pytest.raises(cp.ProfileError):
        cp.install_profile("slurm", cp.ProfileSettings(), dest=tmp_path, name="../escape")


def test_install_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    target, _ = cp.install_profile("slurm", cp.ProfileSettings(partition="cpu"), dest=tmp_path)
    before = target.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        cp.install_profile("slurm", cp.ProfileSettings(partition="long"), dest=tmp_path, force=True)
    assert target.read_text() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["config.yaml"]


def test_cli_install_and_snakemake_finds_bare_name(tmp_path, capsys):
    """`cmb profile install` into $XDG_CONFIG_HOME/snakemake; `snakemake --profile slurm` resolves it there."""
    xdg = tmp_path / "xdg"
    env = dict(os.environ, XDG_CONFIG_HOME=str(xdg))
    rc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmb.cli",
            "profile",
            "install",
            "slurm",
            "--partition",
            "cpu",
            "--account",
            "lab",
            "--gpu-partition",
            "gpu",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert rc.returncode == 0, rc.stderr
    assert "snakemake --profile slurm " in rc.stdout
    installed = xdg / "snakemake" / "slurm" / "config.yaml"
    assert load(installed)["set-resources"]["detect_cmb"]["slurm_partition"] == "gpu"
    code = (
        "import sys; from snakemake.cli import get_profile_dir; print(get_profile_dir('slurm')[1])"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert found.stdout.strip() == str(installed), found.stderr
    # a second, different install is refused with exit 1 and a message
    rc = subprocess.run(
        [sys.executable, "-m", "cmb.cli", "profile", "install", "slurm", "--partition", "other"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert rc.returncode == 1 and "--force" in rc.stderr


def test_cli_print_and_dest(tmp_path, capsys):
    assert cli_main(["profile", "install", "slurm", "--partition", "cpu", "--print"]) == 0
    assert "slurm_partition: 'cpu'" in capsys.readouterr().out
    assert cli_main(["profile", "install", "slurm", "--dest", str(tmp_path)]) == 0
    assert (tmp_path / "slurm" / "config.yaml").read_text() == SLURM.read_text()
    assert f"--profile {tmp_path / 'slurm'}" in capsys.readouterr().out
    assert (
        cli_main(["profile", "install", "slurm", "--partition", "a b", "--dest", str(tmp_path)])
        == 1
    )
