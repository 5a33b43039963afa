"""The ``cmb`` command line: one thin subcommand per stage, each wrapping an API function."""

from __future__ import annotations

import argparse
import importlib
import sys

from cmb.workflow_run import main as run_workflow

__all__ = ["main"]


def _add_module(sub, name: str, module: str, help: str, description: str | None = None) -> None:
    """A subcommand whose parser and runner live in ``module`` (``build_parser``, ``run``),
    imported here, when ``main`` runs, not when this module is: ``import cmb.cli`` and
    ``cmb run`` stay free of torch (seconds), which ``cmb.synth`` and ``cmb.detect`` import."""
    mod = importlib.import_module(module)
    p = sub.add_parser(name, help=help, description=description or help)
    mod.build_parser(p)
    p.set_defaults(func=mod.run)


def main(argv=None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    if args_in[:1] == ["run"]:  # the rest of the line is Snakemake's, not argparse's
        return run_workflow(args_in[1:])
    parser = argparse.ArgumentParser(
        prog="cmb", description="Cohort-scale cerebral microbleed detection."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "run",
        help="run the whole workflow with Snakemake (cmb run --help; every further "
        "argument goes to snakemake)",
    )
    _add_module(
        sub,
        "synth",
        "cmb.synth.cli",
        "generate a synthetic BIDS cohort with ground truth",
        "Generate a BIDS cohort of synthetic SWI / T2*-GRE scans with microbleeds, "
        "veins, calcifications and ground truth in derivatives/cmb-truth/.",
    )
    _add_module(
        sub,
        "profile",
        "cmb.cluster_profile",
        "install a cluster (SLURM) profile where 'snakemake --profile NAME' finds it",
        "Install one of the workflow's Snakemake profiles into the user's Snakemake "
        "profile folder, with the cluster's partition and account filled in "
        "(docs/cluster.md).",
    )
    commands = {
        "crosssim": (
            "cmb.crosssim.__main__",
            "generate a cohort from the second, independent simulator (cross-simulator validation)",
        ),
        "plan": (
            "cmb.ingest_plan",
            "dry run of input selection: per subject/session the files chosen, "
            "the candidates, the files ignored, and why",
        ),
        "detect": ("cmb.detect.__main__", "detect CMBs in one preprocessed scan"),
        "train": ("cmb.detect.training", "train or fine-tune the detector on annotated scans"),
        "calibrate": (
            "cmb.detect.recalibrate",
            "refit a detector's calibration and threshold on annotated scans",
        ),
        "evaluate": (
            "cmb.evaluation",
            "score detections against ground truth (sensitivity, FPavg, FROC)",
        ),
        "review": (
            "cmb.review_server",
            "serve a workflow output folder read-only on 127.0.0.1 for the "
            "subject pages' viewer (prints the URL)",
        ),
    }
    wanted = argv[0] if argv else (sys.argv[1] if len(sys.argv) > 1 else None)
    for name, (module, text) in commands.items():
        if wanted in (
            None,
            name,
            "-h",
            "--help",
        ):  # import torch only for the command that needs it
            _add_module(sub, name, module, text)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
