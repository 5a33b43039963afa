"""``cmb synth``: its options and runner (``build_parser``, ``run``), registered by :mod:`cmb.cli`.

Here rather than in :mod:`cmb.cli` so that the other subcommands (``cmb run``, ``cmb profile``)
start without importing the generator and torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cmb.synth.cohort import SynthError, SynthOptions, synthesize
from cmb.synth.lesions import CMB_SIZE_MODELS, COUNT_PROFILES, LOCATION_PRIORS
from cmb.synth.presets import LAYOUTS, PRESET_NAMES

__all__ = ["build_parser", "run"]


def _te_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"echo times must be comma-separated numbers in ms, got {text!r}"
        ) from None


def build_parser(p: argparse.ArgumentParser) -> None:
    """The options of ``cmb synth`` on ``p`` (one per field of :class:`SynthOptions`)."""
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


def run(args: argparse.Namespace) -> int:
    opts = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    try:
        synthesize(SynthOptions(**opts))
    except SynthError as e:
        print(f"cmb synth: error: {e}", file=sys.stderr)
        return 2
    return 0
