"""Write the MNI-space MARS region map as a BIDS ``dseg`` image with its label table.

The map itself is built by :func:`cmb.mars_region.build_mars_map` from atlases
that ship in installed packages; this module only writes it out (atomically),
once per workflow run, for every subject's native-space warp::

    python -m cmb.mars_map --out-dseg tpl-MNI152NLin2009cAsym_res-1_desc-mars_dseg.nii.gz \\
        --out-tsv tpl-MNI152NLin2009cAsym_res-1_desc-mars_dseg.tsv --juxtacortical-mm 5
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence

import nibabel as nib
import numpy as np

from cmb.atomic import atomic_path, save_nifti
from cmb.config import add_config_sections, default

__all__ = ["main", "write_label_table", "write_mars_map"]

_log = logging.getLogger(__name__)


def write_label_table(path: str | os.PathLike) -> None:
    """Write the MARS label table (BIDS dseg TSV) atomically.

    Columns: ``index, name, mars_category, mars_region, hemisphere``.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "desc-mars_dseg.tsv"
    >>> write_label_table(p)
    >>> p.read_text().splitlines()[:2]
    ['index\\tname\\tmars_category\\tmars_region\\themisphere', '0\\toutside_brain\\tnon-parenchyma\\toutside_brain\\tn/a']
    """
    # lazy: cmb.mars_region imports pandas and scipy.ndimage (~0.7 s), which would double the
    # start-up of python -m cmb.mars_map --help
    from cmb.mars_region import label_table

    with atomic_path(path) as tmp:
        label_table().to_csv(tmp, sep="\t", index=False, lineterminator="\n")


def write_mars_map(
    out_dseg: str | os.PathLike,
    out_tsv: str | os.PathLike | None = None,
    *,
    juxtacortical_mm: float = default("mars", "juxtacortical_mm"),
    capsule_mm: float = default("mars", "capsule_mm"),
    resolution_mm: int = default("mars", "resolution_mm"),
    insula_juxtacortical_mm: float = default("mars", "insula_juxtacortical_mm"),
    label_search_mm: float = default("mars", "label_search_mm"),
) -> nib.Nifti1Image:
    """Build the MARS map on the packaged MNI grid and write it (and its TSV).

    Parameters
    ----------
    out_dseg : path
        NIfTI (int16 labels, see :func:`cmb.mars_region.label_table`).
    out_tsv : path, optional
        The label table.
    juxtacortical_mm, capsule_mm, insula_juxtacortical_mm, label_search_mm : float
        Passed to :func:`cmb.mars_region.build_mars_map`.
    resolution_mm : int
        Integer step of the 1 mm template grid.

    Returns
    -------
    nibabel.Nifti1Image
        The map that was written.
    """
    from cmb.mars_region import build_mars_map
    from cmb.template import load_mni  # lazy: scipy.ndimage, ~0.4 s of --help

    t0 = time.perf_counter()
    mars = build_mars_map(
        load_mni(int(resolution_mm)),
        juxtacortical_mm=juxtacortical_mm,
        capsule_mm=capsule_mm,
        insula_juxtacortical_mm=insula_juxtacortical_mm,
        label_search_mm=label_search_mm,
    )
    img = nib.Nifti1Image(mars.labels.astype(np.int16), mars.affine)
    img.header.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(mars.affine, code=4)  # 4: MNI
    img.header.set_sform(mars.affine, code=4)
    save_nifti(img, out_dseg)
    if out_tsv is not None:
        write_label_table(out_tsv)
    labels = np.unique(mars.labels)
    _log.info(
        "MARS map %s at %d mm: %d labels, built in %.1f s (juxtacortical %.1f mm, capsule %.1f mm)",
        mars.labels.shape,
        resolution_mm,
        len(labels),
        time.perf_counter() - t0,
        juxtacortical_mm,
        capsule_mm,
    )
    return img


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; see ``python -m cmb.mars_map --help``."""
    p = argparse.ArgumentParser(prog="python -m cmb.mars_map", description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dseg", required=True, help="MARS map NIfTI to write")
    p.add_argument("--out-tsv", help="label table (TSV) to write")
    p.add_argument("--juxtacortical-mm", type=float)
    p.add_argument("--capsule-mm", type=float)
    p.add_argument("--resolution-mm", type=int, help="integer step of the 1 mm MNI grid")
    p.add_argument("--insula-juxtacortical-mm", type=float)
    p.add_argument("--label-search-mm", type=float)
    args = add_config_sections(p, "mars").parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write_mars_map(
        args.out_dseg,
        args.out_tsv,
        juxtacortical_mm=args.juxtacortical_mm,
        capsule_mm=args.capsule_mm,
        resolution_mm=args.resolution_mm,
        insula_juxtacortical_mm=args.insula_juxtacortical_mm,
        label_search_mm=args.label_search_mm,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
