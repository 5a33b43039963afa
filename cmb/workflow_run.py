"""``cmb run``: the whole workflow (Snakemake) on a BIDS dataset, from wherever cmb is installed.

The container image's entry point is ``cmb``, so ``podman run IMAGE run --config
bids_dir=... output_dir=...`` runs the same ``snakemake --profile profiles/local`` as
``make demo``, with the Snakefile of the workflow that cmb belongs to. Every argument
after ``run`` goes to snakemake unchanged, except that a bare profile name of the
workflow (``--profile slurm``) is its ``profiles/`` folder. Before Snakemake starts, the
input dataset and the output folder named on the command line are checked, so that a
container started without its bind mounts says which path is missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["workflow_dir", "config_items", "check_paths", "snakemake_command", "main"]

USAGE = """usage: cmb run [SNAKEMAKE ARGS...]

Run the cmb workflow with Snakemake (default profile: the workflow's profiles/local).
Everything after 'run' is passed to snakemake, e.g.

  cmb run --config bids_dir=/data/bids output_dir=/data/derivatives/cmb
  cmb run --profile slurm --config bids_dir=... output_dir=...
  cmb run -n --config bids_dir=... output_dir=...          (dry run)

In a container, bind the BIDS dataset (read-only is enough) and a writable output folder
at the paths given in --config; docs/cluster.md, "Containers".
"""


def workflow_dir() -> Path:
    """The workflow folder (Snakefile, rules/, config/, profiles/): ``$CMB_WORKFLOW_DIR``,
    else the folder that holds the ``cmb`` package."""
    env = os.environ.get("CMB_WORKFLOW_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1]


def config_items(args: list[str]) -> dict[str, str]:
    """``key=value`` pairs given after ``--config`` / ``-C`` (several may follow one flag).

    >>> config_items(["-n", "--config", "bids_dir=/b", "output_dir=/o", "--cores", "2"])
    {'bids_dir': '/b', 'output_dir': '/o'}
    """
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--config", "-C"):
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                key, sep, value = args[i].partition("=")
                if sep:
                    out[key] = value
                i += 1
            continue
        if a.startswith("--config="):
            key, sep, value = a[len("--config=") :].partition("=")
            if sep:
                out[key] = value
        i += 1
    return out


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_paths(items: dict[str, str], default_work_dir: bool = True) -> list[str]:
    """One message per path given on the command line that cannot work: a ``bids_dir``
    that is not a folder, an ``output_dir`` / ``work_dir`` that cannot be created or
    written. With ``output_dir`` given and ``work_dir`` not (and ``default_work_dir``:
    no ``--configfile`` that could set it), the workflow's default work folder
    ``<output_dir>-work`` is checked too: in a container with a read-only root it is
    outside the output bind mount. Paths set in a ``--configfile`` are left to the workflow."""
    problems = []
    hint = (
        "in a container, bind it there (podman run -v HOST_DIR:{p}:ro ..., "
        "apptainer exec --bind HOST_DIR:{p} ...)"
    )
    bids = items.get("bids_dir")
    if bids:
        p = Path(bids)
        if not p.is_dir():
            problems.append(f"bids_dir {bids}: no such folder; " + hint.format(p=bids))
        elif not os.access(p, os.R_OK | os.X_OK):
            problems.append(f"bids_dir {bids}: not readable by user id {os.getuid()}")
    writable = {k: items[k] for k in ("output_dir", "work_dir") if items.get(k)}
    defaulted = default_work_dir and "output_dir" in writable and "work_dir" not in items
    if defaulted:
        writable["work_dir"] = os.path.normpath(writable["output_dir"]) + "-work"
    for key, value in writable.items():
        target = Path(value)
        base = _nearest_existing(target.absolute())
        if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
            why = "read-only" if base.is_dir() else "not a folder"
            name = (
                f"work_dir (empty, so <output_dir>-work) {value}"
                if key == "work_dir" and defaulted
                else f"{key} {value}"
            )
            fix = "; or set work_dir=A_WRITABLE_FOLDER" if key == "work_dir" and defaulted else ""
            problems.append(
                f"{name}: {base} is {why} here, so it cannot be written; in a container, "
                f"bind a writable folder there (podman run -v HOST_DIR:{value} ..., "
                f"apptainer exec --bind HOST_DIR:{value} ...){fix}"
            )
    return problems


def snakemake_command(args: list[str], root: Path | None = None) -> list[str]:
    """The snakemake command line for ``cmb run ARGS``.

    >>> snakemake_command(["--config", "bids_dir=b"], Path("/w"))[1:]
    ['-m', 'snakemake', '--snakefile', '/w/Snakefile', '--profile', '/w/profiles/local', '--config', 'bids_dir=b']
    """
    root = root or workflow_dir()
    args = list(args)
    profiles = root / "profiles"
    has_profile = False
    for i, a in enumerate(args):
        if a == "--profile" and i + 1 < len(args):
            has_profile = True
            name = args[i + 1]
            if "/" not in name and not Path(name).is_dir() and (profiles / name).is_dir():
                args[i + 1] = str(profiles / name)
        elif a.startswith("--profile="):
            has_profile = True
    cmd = [sys.executable, "-m", "snakemake"]
    if "--snakefile" not in args and "-s" not in args:
        cmd += ["--snakefile", str(root / "Snakefile")]
    if not has_profile:
        cmd += ["--profile", str(profiles / "local")]
    return cmd + args


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE, end="")
        return 0
    root = workflow_dir()
    if not (root / "Snakefile").is_file():
        print(
            f"cmb run: no Snakefile in {root} (set CMB_WORKFLOW_DIR to the workflow folder)",
            file=sys.stderr,
        )
        return 2
    problems = check_paths(
        config_items(argv),
        default_work_dir=not any(
            a in ("--configfile", "--configfiles") or a.startswith("--configfile") for a in argv
        ),
    )
    for line in problems:
        print(f"cmb run: error: {line}", file=sys.stderr)
    if problems:
        return 2
    cmd = snakemake_command(argv, root)
    # Jobs run `python -m cmb.<stage>`: this interpreter's folder first on PATH (as `make demo` does).
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(
        p for p in (str(Path(sys.executable).parent), env.get("PATH")) if p
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)
    return 0  # not reached
