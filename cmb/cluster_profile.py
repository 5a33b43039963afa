"""Install one of the workflow's Snakemake profiles where ``snakemake --profile NAME`` finds it.

Snakemake looks up a bare profile name in the current directory, then in the user's
Snakemake config folder (``$XDG_CONFIG_HOME/snakemake``, else ``~/.config/snakemake`` on
Linux), then in the site folder (``/etc/xdg/snakemake``); never in this repository's
``profiles/``. ``cmb profile install`` copies a profile there with the cluster's
partition and account filled in::

    cmb profile install slurm --partition cpu --account mylab --gpu-partition gpu
    snakemake --profile slurm --config bids_dir=/data/bids output_dir=/data/derivatives/cmb

The profile is rendered from ``profiles/<profile>/config.yaml`` of this workflow by
turning its commented placeholder lines (``# slurm_partition: PARTITION``) into
settings; every other line, comments included, is kept. The file is written atomically
(temporary file, then rename). An existing profile with different content is kept
unless ``--force``; an identical one is left as it is.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from cmb.atomic import write_text

__all__ = [
    "ProfileError",
    "ProfileSettings",
    "available_profiles",
    "install_profile",
    "profile_source_dir",
    "render_profile",
    "user_profile_dir",
]

# Partition and account names (a comma-separated list of partitions is valid for sbatch -p).
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+:-]*(,[A-Za-z0-9_][A-Za-z0-9_.+:-]*)*$")
# The SLURM plugin's own check of a GPU model (snakemake-executor-plugin-slurm, set_gres_string).
_GPU_MODEL_RE = re.compile(r"^[A-Za-z0-9_.]+$")
_PROFILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
STATUS_COMMANDS = ("squeue", "sacct")


class ProfileError(Exception):
    """A profile that cannot be rendered or installed; the message says why."""


@dataclass(frozen=True)
class ProfileSettings:
    partition: str | None = None
    account: str | None = None
    gpu_partition: str | None = None
    gpu_model: str | None = None
    status_command: str | None = None


def profile_source_dir() -> Path:
    """This workflow's ``profiles/`` folder (next to the ``cmb`` package and the Snakefile)."""
    return Path(__file__).resolve().parents[1] / "profiles"


def available_profiles(source: Path | None = None) -> list[str]:
    source = Path(source) if source else profile_source_dir()
    if not source.is_dir():
        return []
    return sorted(p.name for p in source.iterdir() if (p / "config.yaml").is_file())


def user_profile_dir(env: dict | None = None) -> Path:
    """The user's Snakemake config folder, the one ``snakemake --profile NAME`` searches.

    Snakemake asks platformdirs for ``AppDirs("snakemake", "snakemake").user_config_dir``;
    on Linux that is ``$XDG_CONFIG_HOME/snakemake`` (when set to an absolute path),
    else ``~/.config/snakemake``.

    >>> str(user_profile_dir({"XDG_CONFIG_HOME": "/cfg", "HOME": "/home/u"}))
    '/cfg/snakemake'
    >>> str(user_profile_dir({"HOME": "/home/u"}))
    '/home/u/.config/snakemake'
    """
    env = os.environ if env is None else env
    if sys.platform.startswith("linux") or env is not os.environ:
        xdg = env.get("XDG_CONFIG_HOME", "").strip()
        if xdg and os.path.isabs(xdg):
            return Path(xdg) / "snakemake"
        home = env.get("HOME") or os.path.expanduser("~")
        return Path(home) / ".config" / "snakemake"
    # lazy: platformdirs is Snakemake's dependency, not ours, and only this branch needs it
    from platformdirs import AppDirs  # macOS and others: exactly what Snakemake uses

    return Path(AppDirs("snakemake", "snakemake").user_config_dir)


def _check(value: str | None, what: str, pattern: re.Pattern) -> None:
    if value is not None and not pattern.match(value):
        raise ProfileError(f"invalid {what} {value!r}: letters, digits and _ . + : - only")


def _uncomment(text: str, key: str, placeholder: str, value: str) -> tuple[str, int]:
    """``# key: PLACEHOLDER ...`` lines become ``key: 'value'`` (indentation kept)."""
    pattern = re.compile(
        rf"^(?P<indent>[ \t]*)#[ \t]*{re.escape(key)}:[ \t]*{re.escape(placeholder)}\b.*$",
        re.MULTILINE,
    )
    return pattern.subn(lambda m: f"{m.group('indent')}{key}: {_quote(value)}", text)


def _quote(value: str) -> str:
    """A YAML string scalar: numeric-looking account names stay text."""
    return "'" + value.replace("'", "''") + "'"


def render_profile(text: str, settings: ProfileSettings) -> str:
    """The profile's YAML with ``settings`` filled in; ProfileError if a placeholder is missing."""
    s = settings
    _check(s.partition, "partition", _NAME_RE)
    _check(s.account, "account", _NAME_RE)
    _check(s.gpu_partition, "GPU partition", _NAME_RE)
    _check(s.gpu_model, "GPU model", _GPU_MODEL_RE)
    if s.status_command is not None and s.status_command not in STATUS_COMMANDS:
        raise ProfileError(
            f"status command must be one of {', '.join(STATUS_COMMANDS)}, not {s.status_command!r}"
        )

    out = text
    for key, placeholder, value in (
        ("slurm_partition", "PARTITION", s.partition),
        ("slurm_account", "ACCOUNT", s.account),
        ("slurm_partition", "GPU_PARTITION", s.gpu_partition),
    ):
        if value is None:
            continue
        out, n = _uncomment(out, key, placeholder, value)
        if n != 1:
            raise ProfileError(f"the profile has {n} '# {key}: {placeholder}' lines, expected one")
    if s.gpu_model is not None:
        out, n_model = _uncomment(out, "gpu_model", "GPU_MODEL", s.gpu_model)
        out, n_gres = re.subn(
            r"""^(?P<i>[ \t]*)gres:[ \t]*["']?gpu:1["']?""",
            lambda m: f"{m.group('i')}gres: {_quote('gpu:' + s.gpu_model + ':1')}",
            out,
            flags=re.MULTILINE,
        )
        if n_model + n_gres != 1:
            raise ProfileError(
                "the profile has no single '# gpu_model: GPU_MODEL' or 'gres: \"gpu:1\"' line"
            )
    if s.status_command is not None:
        out, n = re.subn(
            r"^slurm-status-command:[ \t]*\S+",
            f"slurm-status-command: {s.status_command}",
            out,
            flags=re.MULTILINE,
        )
        if n != 1:
            raise ProfileError("the profile has no 'slurm-status-command:' line")

    try:  # the result must still be a profile, with the values where Snakemake reads them
        cfg = yaml.safe_load(out)
    except yaml.YAMLError as e:
        raise ProfileError(f"the rendered profile is not valid YAML: {e}") from None
    defaults = (cfg or {}).get("default-resources") or {}
    detect = ((cfg or {}).get("set-resources") or {}).get("detect_cmb") or {}
    for value, where, got in (
        (s.partition, "default-resources.slurm_partition", defaults.get("slurm_partition")),
        (s.account, "default-resources.slurm_account", defaults.get("slurm_account")),
        (
            s.gpu_partition,
            "set-resources.detect_cmb.slurm_partition",
            detect.get("slurm_partition"),
        ),
    ):
        if value is not None and got != value:
            raise ProfileError(f"{where} reads {got!r} after rendering, not {value!r}")
    return out


def install_profile(
    profile: str,
    settings: ProfileSettings,
    *,
    dest: Path | None = None,
    name: str | None = None,
    force: bool = False,
    source: Path | None = None,
) -> tuple[Path, str]:
    """Render ``profile`` and write it to ``<dest>/<name>/config.yaml``.

    ``dest`` defaults to :func:`user_profile_dir`, ``name`` to ``profile``. Returns the
    written file and what happened: "installed", "replaced" or "unchanged". Raises
    ProfileError when an existing, different profile is there and ``force`` is false.
    """
    source = Path(source) if source else profile_source_dir()
    known = available_profiles(source)
    if profile not in known:
        raise ProfileError(
            f"no profile {profile!r} in {source} (available: {', '.join(known) or 'none'})"
        )
    name = name or profile
    if not _PROFILE_NAME_RE.match(name):
        raise ProfileError(f"invalid profile name {name!r}")
    text = render_profile((source / profile / "config.yaml").read_text(encoding="utf-8"), settings)

    target_dir = (Path(dest) if dest else user_profile_dir()) / name
    target = target_dir / "config.yaml"
    if target_dir.exists() and not target_dir.is_dir():
        raise ProfileError(f"{target_dir} exists and is not a folder")
    if target.exists():
        old = target.read_text(encoding="utf-8", errors="replace")
        if old == text:
            return target, "unchanged"
        if not force:
            raise ProfileError(
                f"{target} exists with different settings; "
                f"rerun with --force to replace it (or --name to install under another name)"
            )
        write_text(target, text)
        return target, "replaced"
    others = [p.name for p in target_dir.iterdir()] if target_dir.is_dir() else []
    if (
        any(
            n in ("profile.yaml",) or re.fullmatch(r"(profile|config)\.v\d+\+\.yaml", n)
            for n in others
        )
        and not force
    ):
        raise ProfileError(
            f"{target_dir} already holds a Snakemake profile ({', '.join(sorted(others))}); "
            f"rerun with --force to add config.yaml there"
        )
    write_text(target, text)
    return target, "installed"


# ------------------------------------------------------------------ command line


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub = p.add_subparsers(dest="profile_command", required=True)
    i = sub.add_parser(
        "install",
        help="copy a profile into Snakemake's profile folder with your cluster's names filled in",
        description="Copy profiles/<PROFILE> of this workflow into the user's Snakemake profile folder "
        "(where 'snakemake --profile NAME' finds it), with partition and account filled in.",
    )
    i.add_argument(
        "profile", help=f"profile to install ({', '.join(available_profiles()) or 'see profiles/'})"
    )
    i.add_argument(
        "--partition",
        help="SLURM partition of every job (default: the cluster's default partition)",
    )
    i.add_argument(
        "--account", help="SLURM account (default: the plugin guesses one, or submits without)"
    )
    i.add_argument(
        "--gpu-partition", help="partition of the GPU (detect_cmb) jobs, when GPUs have their own"
    )
    i.add_argument(
        "--gpu-model", help="GPU type, e.g. a100 (sbatch --gpus=a100:1, or --gres=gpu:a100:1)"
    )
    i.add_argument(
        "--status-command",
        choices=STATUS_COMMANDS,
        help="how the plugin polls job states: squeue (the profile's default, works without "
        "slurmdbd) or sacct (clusters with accounting)",
    )
    i.add_argument("--name", help="install under this profile name (default: PROFILE)")
    i.add_argument(
        "--dest",
        type=Path,
        help="profile folder (default: $XDG_CONFIG_HOME/snakemake or "
        "~/.config/snakemake, which Snakemake searches)",
    )
    i.add_argument("--force", action="store_true", help="replace an existing profile of that name")
    i.add_argument(
        "--print",
        dest="print_only",
        action="store_true",
        help="print the rendered profile instead of installing it",
    )
    sub.add_parser("list", help="list the workflow's profiles and the folder they install to")
    return p


def run(args) -> int:
    if args.profile_command == "list":
        for name in available_profiles():
            print(name)
        print(f"(installed to {user_profile_dir()})", file=sys.stderr)
        return 0
    settings = ProfileSettings(
        partition=args.partition,
        account=args.account,
        gpu_partition=args.gpu_partition,
        gpu_model=args.gpu_model,
        status_command=args.status_command,
    )
    try:
        if args.print_only:
            source = profile_source_dir()
            if args.profile not in available_profiles(source):
                raise ProfileError(f"no profile {args.profile!r} in {source}")
            sys.stdout.write(
                render_profile(
                    (source / args.profile / "config.yaml").read_text(encoding="utf-8"), settings
                )
            )
            return 0
        target, what = install_profile(
            args.profile, settings, dest=args.dest, name=args.name, force=args.force
        )
    except (ProfileError, OSError) as e:
        print(f"cmb profile: error: {e}", file=sys.stderr)
        return 1
    name = target.parent.name
    default_dir = target.parent.parent == user_profile_dir()
    print(f"{what}: {target}")
    print(
        f"use it with: snakemake --profile {name if default_dir else target.parent} "
        f"--config bids_dir=... output_dir=..."
    )
    return 0


def main(argv=None) -> int:
    parser = build_parser(
        argparse.ArgumentParser(prog="cmb profile", description=__doc__.split("\n\n")[0])
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
