"""``cmb crosssim`` / ``python -m cmb.crosssim``: generate a cross-simulator BIDS cohort with ground truth.

cmb crosssim --out /data/xs --n-subjects 15 --seed 7 [--cmb-free 3] [--n-cmb 6] [--preset mixed] [--overwrite]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cmb.crosssim.cohort import PRESET_NAMES, CrossSimError, CrossSimOptions, generate

__all__ = ["build_parser", "run", "main"]


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(
        prog="python -m cmb.crosssim",
        description="Generate a BIDS cohort from the cross-simulator (procedural heads, analytic fields, "
        "Monte-Carlo sub-voxel signal, multi-coil noise) with ground truth in derivatives/cmb-truth/.",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output BIDS folder (must be empty unless --overwrite)",
    )
    p.add_argument(
        "--n-subjects", required=True, type=int, help="subjects with 0-12 microbleeds each"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cmb-free", type=int, default=0, help="extra subjects without any microbleed")
    p.add_argument(
        "--n-cmb", type=int, default=None, help="fixed number of microbleeds per subject"
    )
    p.add_argument(
        "--n-veins",
        type=int,
        default=None,
        help="fixed number of veins per subject (default 15-30)",
    )
    p.add_argument(
        "--preset",
        default="mixed",
        help=f"one of {', '.join(PRESET_NAMES)} (mixed: swi-3t, gre-3t, gre-1.5t in turn)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def run(args: argparse.Namespace) -> int:
    opts = {
        k: getattr(args, k)
        for k in (
            "out",
            "n_subjects",
            "seed",
            "cmb_free",
            "n_cmb",
            "n_veins",
            "preset",
            "overwrite",
        )
    }
    try:
        generate(CrossSimOptions(**opts))
    except CrossSimError as e:
        print(f"cmb crosssim: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
