"""Old name of :mod:`cmb.registration` (issue 23): a stop-gap for the two modules still importing it.

:mod:`cmb.preprocess` (``_ants``, ``_zooms``, ...) and :mod:`cmb.localize` (``XfmPaths``,
``subject_to_mni_points``) import from here; once they import from :mod:`cmb.registration`
(``import_ants``, ``voxel_sizes``, ...) this module goes. Import nothing new from it.
"""

from __future__ import annotations

from cmb.registration import (
    XfmPaths,
    downsample_blocks,
    import_ants,
    set_threads,
    subject_to_mni_points,
    to_ants,
    upsample_blocks,
    voxel_sizes,
)

__all__ = ["XfmPaths", "downsample_blocks", "set_threads", "subject_to_mni_points", "to_ants", "upsample_blocks"]

# the old private names, under which cmb.preprocess still imports them
_ants = import_ants
_zooms = voxel_sizes

if __name__ == "__main__":  # the command line moved with the rest: fail loudly rather than do nothing
    raise SystemExit("python -m cmb.register is now python -m cmb.registration")
