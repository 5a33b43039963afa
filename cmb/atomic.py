"""Atomic file writes: a crash never leaves a partial file under the final name.

Each writer writes to a hidden temporary file in the destination folder, flushes
it to disk, then renames it over the target with :func:`os.replace`, which is
atomic on POSIX filesystems.

A process killed with SIGKILL (or a power cut) cannot remove its temporary file:
the next write of the same target removes such leftovers
(``.<name>.<random>.tmp<suffix>``). This assumes one writer per target at a time,
which Snakemake guarantees (one job per output, and a lock per working directory).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

try:
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - optional speed-up
    _igzip = None

__all__ = ["atomic_path", "write_text", "write_json", "save_nifti"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``path``; move it into place on success.

    The temporary name keeps the final suffix (``.nii.gz`` matters to nibabel).
    On any exception the temporary file is removed and ``path`` is untouched.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "a.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (d / "a.txt").read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    _remove_stale_temporaries(path, suffix)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o666 & ~umask  # mkstemp creates 0600; outputs should be readable like any file
    os.chmod(tmp, mode)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # again: some writers (safetensors) replace the file they are given
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_stale_temporaries(path: Path, suffix: str) -> None:
    """Remove temporary files an earlier, killed writer of ``path`` left behind."""
    prefix, end = f".{path.name}.", f".tmp{suffix}"
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        # mkstemp's random part has no dots: ".a.nii.gz.x1y2.tmp.nii.gz", not ".a.nii.gz.b.x1y2..."
        middle = (
            name[len(prefix) : len(name) - len(end)]
            if name.startswith(prefix) and name.endswith(end)
            else ""
        )
        if middle and "." not in middle:
            with contextlib.suppress(OSError):
                (path.parent / name).unlink()


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def save_nifti(img: nib.Nifti1Image, path) -> None:
    """Save atomically; ``.nii.gz`` is compressed with ISA-L (python-isal) when available.

    ISA-L at level 1 is about 20x faster than zlib for noisy image data, and
    the result is a standard gzip stream that every NIfTI reader opens. The gzip
    header holds no file name or time, so equal images give byte-identical files.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.name.endswith(".nii.gz") and _igzip is not None:
            data = np.asanyarray(img.dataobj)
            if data.flags.c_contiguous and data.ndim > 1:  # NIfTI is column-major on disk
                img = img.__class__(np.asfortranarray(data), img.affine, img.header)
            payload = img.to_bytes()
            # no file name and a zero time in the gzip header: the same image gives the same bytes
            with (
                open(tmp, "wb") as raw,
                _igzip.IGzipFile(
                    filename="", mode="wb", compresslevel=1, fileobj=raw, mtime=0
                ) as f,
            ):
                f.write(payload)
        else:
            nib.save(img, tmp)
