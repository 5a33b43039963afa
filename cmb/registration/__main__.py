"""``python -m cmb.registration``: register one subject to MNI and warp its atlases (:mod:`cmb.registration.cli`)."""

from __future__ import annotations

from cmb.registration.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
