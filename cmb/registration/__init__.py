"""Registration to the MNI template, native-space atlases and point mapping (ANTsPy).

Everything that touches ITK/ANTs conventions lives in this package: ANTs images and points
are in LPS millimetres, NIfTI (and the rest of ``cmb``) in RAS. The helpers
:func:`to_ants` and :func:`from_ants` convert images exactly (no resampling, the
direction cosines of oblique grids are kept), and the point functions take and
return RAS.

Modules:

- :mod:`cmb.registration.ants_adapter`: the thin layer over ANTsPy (image conversion,
  transform files and their names, threads, seed, temporary folders);
- :mod:`cmb.registration.grids`: voxel grids (block-average down- and upsampling);
- :mod:`cmb.registration.register`: the registration to MNI (:func:`register_subject`)
  and its quality record;
- :mod:`cmb.registration.warp_labels`: MARS and Desikan-Killiany maps warped to the
  native grid, points mapped between subject and MNI;
- :mod:`cmb.registration.native_tissue`: the subject's own CSF/GM/WM classes (Atropos
  with the warped priors), which set the atlas route's cortex/white-matter border;
- :mod:`cmb.registration.cli`: ``python -m cmb.registration``.

Pipeline of :func:`register_subject`:

1. optional SWI->T1w rigid registration (mutual information) when a T1w exists;
2. subject->MNI affine then SyN, both at a coarse resolution: the
   brain-masked subject image is block-averaged to ``step_mm`` (4 mm by
   default) and registered to the packaged ICBM 2009c template subsampled to
   the same step, at 8 then 4 mm. Both stages use mutual information, since
   SWI/T2* magnitude and T1 contrast differ (see :func:`register_to_mni` for
   the accuracy and time of the alternatives).
   With a T1w, the T1w is registered to the T1 template instead and the rigid
   SWI->T1w transform is folded into the affine;
3. transforms saved in ANTs formats, named BIDS-style (:class:`XfmPaths`);
4. a quality JSON (:func:`registration_quality`);
5. the MNI MARS map (and optionally the Desikan-Killiany labels) warped to the
   native preprocessed grid with nearest-neighbour interpolation.

ANTsPy writes its transforms to ``$TMPDIR`` and never deletes them; every call
here runs inside :func:`ants_tempdir`, a private temporary folder removed on exit.

Template contrast: for SWI/T2* magnitude (CSF bright, grey > white matter) the
T1 template is inverted inside its brain mask (``contrast="swi"``), which gives
the same intensity order; mutual information copes with the rest (dark
iron-rich nuclei).
"""

from __future__ import annotations

from cmb.registration.ants_adapter import (
    ANTS_RANDOM_SEED,
    SOURCE_SPACE,
    XfmPaths,
    ants_tempdir,
    from_ants,
    import_ants,
    set_threads,
    to_ants,
    xfm_paths,
)
from cmb.registration.cli import main
from cmb.registration.grids import downsample_blocks, upsample_blocks, voxel_sizes
from cmb.registration.register import (
    MNIRegistration,
    mni_target,
    register_rigid,
    register_subject,
    register_to_mni,
    registration_quality,
)
from cmb.registration.warp_labels import (
    mni_to_subject_points,
    subject_to_mni_points,
    warp_labels_to_native,
)

__all__ = [
    "SOURCE_SPACE",
    "ANTS_RANDOM_SEED",
    "XfmPaths",
    "xfm_paths",
    "set_threads",
    "import_ants",
    "to_ants",
    "from_ants",
    "ants_tempdir",
    "voxel_sizes",
    "downsample_blocks",
    "upsample_blocks",
    "mni_target",
    "register_rigid",
    "MNIRegistration",
    "register_to_mni",
    "registration_quality",
    "warp_labels_to_native",
    "mni_to_subject_points",
    "subject_to_mni_points",
    "register_subject",
    "main",
]
