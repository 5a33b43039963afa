"""On-disk cache for derived MNI resources (head model, MARS map) that take seconds to build.

The cache lives in ``$CMB_CACHE_DIR``, else ``$XDG_CACHE_HOME/cmb``, else
``~/.cache/cmb``. Entries are keyed by name and cmb version, written atomically,
and rebuilt when missing or unreadable. Set ``CMB_CACHE_DIR=off`` to disable.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

import cmb
from cmb.atomic import atomic_path

__all__ = ["cache_dir", "load_arrays", "save_arrays"]


def cache_dir() -> Path | None:
    env = os.environ.get("CMB_CACHE_DIR")
    if env == "off":
        return None
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cmb"


def _path(key: str) -> Path | None:
    root = cache_dir()
    return None if root is None else root / f"{key}-v{cmb.__version__}.npz"


def load_arrays(key: str) -> tuple[dict[str, np.ndarray], dict] | None:
    """Arrays and JSON metadata stored under ``key``, or None if absent or unreadable."""
    path = _path(key)
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
            meta = json.loads(bytes(z["__meta__"]).decode())
        return arrays, meta
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def save_arrays(key: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    path = _path(key)
    if path is None:
        return
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(
                    f, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays
                )
    except OSError:
        pass  # a read-only home or a full disk must not stop the run
