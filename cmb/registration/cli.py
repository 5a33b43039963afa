"""``python -m cmb.registration``, the workflow's ``register`` rule: one subject through
:func:`cmb.registration.register.register_subject` (MNI transforms, quality record, atlases
warped to the subject)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence

from cmb.config import add_config_sections, int_list
from cmb.layout import SOURCE_SPACE
from cmb.registration.ants_adapter import set_threads
from cmb.registration.register import register_subject

__all__ = ["main"]

_log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cmb.registration", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--image", required=True, help="preprocessed SWI/T2* magnitude (desc-preproc)")
    p.add_argument("--mask", required=True, help="its brain mask (desc-brain_mask)")
    p.add_argument(
        "--out-prefix",
        required=True,
        help="transforms are <prefix>_from-<space>_to-MNI152NLin2009cAsym_mode-image_xfm.{mat,nii.gz} "
        "and the inverse",
    )
    p.add_argument("--out-quality", help="registration quality JSON")
    p.add_argument("--t1w", help="T1w of the same session (optional)")
    p.add_argument(
        "--mars-mni", help="MNI MARS dseg from `python -m cmb.mars_map` (built if omitted)"
    )
    p.add_argument("--out-mars", help="native-space MARS dseg (desc-mars_dseg.nii.gz)")
    p.add_argument("--out-mars-tsv", help="its label table")
    p.add_argument("--out-dk", help="native-space Desikan-Killiany dseg (optional)")
    p.add_argument("--source-space", default=SOURCE_SPACE, help="space label of the subject image")
    p.add_argument("--step-mm", type=int, help="registration resolution (mm); levels at 2x and 1x")
    p.add_argument("--no-syn", dest="syn", action="store_false", help="affine only")
    p.add_argument(
        "--syn-iterations", type=int_list, help="SyN iterations per level, comma-separated"
    )
    p.add_argument(
        "--interpolation", dest="label_interpolation", choices=["nearestNeighbor", "genericLabel"]
    )
    p.add_argument("--threads", type=int, default=None, help="ITK threads")
    p.add_argument(
        "--parcellation",
        help="the session's T1w-space parcellation (cmb.parcellation): the native "
        "MARS map comes from it (needs --t1w)",
    )
    p.add_argument(
        "--parcellation-root",
        dest="parcellation_dir",
        help="mars.parcellation_dir (for parcellation_source)",
    )
    p.add_argument(
        "--parcellation-refused",
        help="why the session has no usable parcellation (the workflow's "
        "search): recorded in the report, the atlas route is used",
    )
    p.add_argument("--parcellation-min-dice", type=float)
    for opt in ("juxtacortical-mm", "insula-juxtacortical-mm", "capsule-mm", "label-search-mm"):
        p.add_argument(
            f"--{opt}",
            type=float,
            help="MARS geometry of the parcellation's map (as for the MNI map)",
        )
    return add_config_sections(p, "register", "mars")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    set_threads(args.threads)
    report = register_subject(
        args.image,
        args.mask,
        args.out_prefix,
        out_quality=args.out_quality,
        t1w=args.t1w,
        mars_mni=args.mars_mni,
        out_mars=args.out_mars,
        out_mars_tsv=args.out_mars_tsv,
        out_dk=args.out_dk,
        source_space=args.source_space,
        step_mm=args.step_mm,
        syn=args.syn,
        syn_iterations=tuple(args.syn_iterations),
        interpolation=args.label_interpolation,
        parcellation=args.parcellation,
        parcellation_root=args.parcellation_dir or None,
        parcellation_refused=args.parcellation_refused,
        parcellation_min_dice=args.parcellation_min_dice,
        mars_options={
            k: getattr(args, k)
            for k in (
                "juxtacortical_mm",
                "insula_juxtacortical_mm",
                "capsule_mm",
                "label_search_mm",
            )
        },
        native_tissue=(
            {"dark_focus_mm": args.dark_focus_mm, "cortex_search_mm": args.cortex_search_mm}
            if args.native_tissue
            else None
        ),
    )
    _log.info("quality: %s", json.dumps(report["quality"]))
    _log.info("timings: %s", json.dumps(report["timings"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
