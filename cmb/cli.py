"""The ``cmb`` command line: one thin subcommand per stage, each wrapping an API function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _te_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"echo times must be comma-separated numbers in ms, got {text!r}"
        ) from None


def _add_synth(sub) -> None:
    from cmb.synth.lesions import CMB_SIZE_MODELS, COUNT_PROFILES, LOCATION_PRIORS
    from cmb.synth.presets import LAYOUTS, PRESET_NAMES

    p = sub.add_parser(
        "synth",
        help="generate a synthetic BIDS cohort with ground truth",
        description="Generate a BIDS cohort of synthetic SWI / T2*-GRE scans with microbleeds, "
        "veins, calcifications and ground truth in derivatives/cmb-truth/.",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output BIDS folder (must be empty unless --overwrite)",
    )
    p.add_argument("--n-subjects", required=True, type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="tiny", help=f"one of {', '.join(PRESET_NAMES)}")
    p.add_argument(
        "--layout",
        default=None,
        help=f"BIDS naming variant: {', '.join(LAYOUTS)} (default: per preset)",
    )
    p.add_argument(
        "--location-prior",
        default="mixed",
        help=f"CMB location prior: {', '.join(LOCATION_PRIORS)}, "
        "or weights like lobar=0.6,deep=0.3,infratentorial=0.1",
    )
    p.add_argument(
        "--count-profile",
        default="population",
        help=f"CMB count distribution: {', '.join(COUNT_PROFILES)}",
    )
    p.add_argument("--n-cmb", type=int, default=None, help="fixed number of CMBs per subject")
    p.add_argument(
        "--n-veins",
        type=int,
        default=None,
        help="number of small veins per subject (default 14-25; 25-60 with --vein-model randomized)",
    )
    p.add_argument(
        "--vein-model",
        default="anatomical",
        help="anatomical (medullary and pial veins) or randomized (mostly domain-randomized veins: "
        "every orientation, a third along B0, 0.15-1.5 mm, straight, curved and branching; "
        "15%% of CMBs against a vein)",
    )
    p.add_argument(
        "--cmb-sizes",
        default=None,
        choices=sorted(CMB_SIZE_MODELS),
        help="apparent CMB diameters: typical (log-normal around 3.3 mm) or wide (log-uniform 2-10 mm); "
        "default: wide with --preset randomized, else typical",
    )
    p.add_argument(
        "--t1w",
        dest="with_t1w",
        action="store_true",
        help="also write a 1 mm T1w in the same head pose",
    )
    p.add_argument(
        "--parcellation",
        action="store_true",
        help="with --t1w: its true aparc+aseg labels, fMRIPrep-named, in derivatives/synth-parcellation "
        "(for mars.parcellation_dir)",
    )
    p.add_argument(
        "--sessions", type=int, default=0, help="sessions per subject (0: no ses- entity)"
    )
    p.add_argument(
        "--phase",
        dest="phase_filter",
        default="raw",
        help="raw (wrapped) or hp (SWI high-pass) phase",
    )
    p.add_argument("--phase-units", default="auto", help="auto (by vendor), rad, deg or int12")
    p.add_argument(
        "--paramagnetic-phase", default="auto", help="auto (by vendor), positive or negative"
    )
    p.add_argument(
        "--slice-thickness",
        dest="slice_mm",
        type=float,
        default=None,
        help="mm, e.g. 5 for gre-1.5t",
    )
    p.add_argument("--n-echoes", type=int, default=None, help="echoes of the megre preset (3-5)")
    p.add_argument(
        "--te",
        dest="te_ms",
        type=_te_list,
        default=None,
        help="echo time(s) in ms, comma-separated",
    )
    p.add_argument("--field-strength", type=float, default=None, help="B0 in tesla")
    p.add_argument("--snr", type=float, default=None, help="white-matter SNR of the first echo")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument(
        "--preview", action="store_true", help="also write a preview mosaic of one subject"
    )
    p.set_defaults(func=_run_synth)


def _run_synth(args) -> int:
    from cmb.synth import SynthError, SynthOptions, synthesize

    opts = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    try:
        synthesize(SynthOptions(**opts))
    except SynthError as e:
        print(f"cmb synth: error: {e}", file=sys.stderr)
        return 2
    return 0


def _add_module(sub, name: str, module: str, help: str) -> None:
    """A subcommand whose parser and runner live in ``module`` (``build_parser``, ``run``)."""
    import importlib

    mod = importlib.import_module(module)
    p = sub.add_parser(name, help=help, description=help)
    mod.build_parser(p)
    p.set_defaults(func=mod.run)


def _add_profile(sub) -> None:
    from cmb import cluster_profile

    p = sub.add_parser(
        "profile",
        help="install a cluster (SLURM) profile where 'snakemake --profile NAME' finds it",
        description="Install one of the workflow's Snakemake profiles into the user's Snakemake "
        "profile folder, with the cluster's partition and account filled in "
        "(docs/cluster.md).",
    )
    cluster_profile.build_parser(p)
    p.set_defaults(func=cluster_profile.run)


def main(argv=None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    if args_in[:1] == ["run"]:  # the rest of the line is Snakemake's, not argparse's
        from cmb.workflow_run import main as run_workflow

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
    _add_synth(sub)
    _add_profile(sub)
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
