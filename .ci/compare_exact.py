"""Compare two cmb output folders of the same cohort byte for byte, apart from provenance.

    python .ci/compare_exact.py A_OUT B_OUT --paths A_BIDS=B_BIDS [--paths ...]

Made for the container test (.ci/container_test.sh): the same demo subject through the
image and through the host's venv. Unlike .ci/compare_outputs.py (local vs SLURM, which
checks tables and arrays only), every output file is compared, and the only things
allowed to differ are these provenance fields:

- versions: the JSON keys ``software`` (the Provenance's package versions: Debian's
  Python 3.11.2 in the image, the host's own Python outside), ``cmb_version``,
  ``torch_version`` and ``GeneratedBy[].Version``, and the SVG creator line
  (``Matplotlib vX.Y.Z, https://matplotlib.org/``);
- the source tree: the JSON key ``git`` (commit and dirty flag of the workflow folder,
  null in the image, which has no .git);
- paths: the JSON keys ``model_dir`` (where the shipped weights live) and
  ``config_sha256`` (the hash of the whole config, which holds ``bids_dir`` and
  ``output_dir``); every other path is compared after the two runs' folders are
  replaced by placeholders: A_OUT and B_OUT by ``<OUT>``, and each ``--paths A=B`` pair
  (the BIDS input, bound at another path in the container) by ``<PATHn>`` (the pairs are replaced first, so a pair may name the output folder as the
  run saw it: ``A_OUT=/data/out``);
- the pages' browser-storage keys (``storage_key``, the ratings key): a hash of the
  output folder's path;
- times: the JSON keys ``timings``, ``seconds`` (stage durations) and ``time`` (the
  status records' finish time), and the SVG ``<dc:date>`` element.

A JSON key is ignored wherever it sits (``Provenance.software.numpy``, ``timings.n4_s``);
the HTML reports render the same JSON as ``<th>dotted.key</th><td>value</td>`` rows, and
a row whose dotted key holds an ignored key has its value masked. The folders
``logs/`` and ``benchmarks/`` (run records: timestamps, PIDs, CPU seconds) are left out.
Everything else (NIfTI .nii.gz, ANTs .mat, CSV/TSV, .bidsignore, the rest of every JSON,
HTML and SVG) must be identical bytes after the path placeholders, with one exception:
a floating-point NIfTI image whose bytes differ passes when its header is identical and
its voxels agree to float32 rounding (``np.allclose(rtol=1e-5, atol=1e-6)``, the same
NaNs); the line says how many such images there were and their largest difference.
Integer images (label maps, masks) must be identical bytes. Why: the CNN's float32
convolutions on the CPU can round the last bit differently in another process on the
same machine; seen once, in CI on 2026-12-07, as the confidence map of the demo subject
(its candidate table, at 6 significant digits, identical), never here. Exit 1 on any
difference, one line each; exit 1 too if there was nothing to compare.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

SKIP_DIRS = {"logs", "benchmarks"}
# JSON keys (anywhere in a document) whose values name versions, paths or times
IGNORED_KEYS = {
    "software",
    "cmb_version",
    "torch_version",
    "git",
    "model_dir",
    "config_sha256",
    "timings",
    "seconds",
    "time",
}
MASK = "<provenance>"
SVG_PATTERNS = [
    re.compile(r"<dc:date>[^<]*</dc:date>"),
    re.compile(r"Matplotlib v[0-9][^,<\"]*, https://matplotlib\.org/"),
]
# the pages' browser-storage keys: a hash of the output folder's path (ratings, verdicts)
HTML_PATTERNS = [
    re.compile(r'("storage_key": ")[0-9a-f]{12}(")'),
    re.compile(r'("cmb-ratings:" \+ document\.title \+ ":)[0-9a-f]{12}(")'),
]
# an HTML table row of a flattened JSON document: <th>a.b[0].c</th><td>...</td>
HTML_ROW = re.compile(r"(<th>)([^<]*)(</th>\s*<td>)(.*?)(</td>)", re.S)


def files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in SKIP_DIRS
    }


def _key_ignored(dotted: str) -> bool:
    parts = re.split(r"[.\[\]]+", dotted)
    if "GeneratedBy" in parts and parts[-1] == "Version":
        return True
    return any(p in IGNORED_KEYS for p in parts)


def mask_json(obj, key: str = ""):
    """The document with the values of ignored keys replaced by MASK."""
    if isinstance(obj, dict):
        return {
            k: (MASK if _key_ignored(f"{key}.{k}") else mask_json(v, f"{key}.{k}"))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [mask_json(v, f"{key}[{i}]") for i, v in enumerate(obj)]
    return obj


def normalize_text(text: str, subs: list[tuple[str, str]]) -> str:
    for old, new in subs:
        text = text.replace(old, new)
    return text


def canonical(rel: str, data: bytes, subs: list[tuple[str, str]]) -> bytes:
    """The bytes to compare: paths replaced, provenance masked. Only for files whose raw
    bytes differ; a JSON document is parsed, masked and written again in one layout (key
    order kept; values exactly as parsed, so that any other change shows)."""
    if rel.endswith((".nii", ".nii.gz", ".mat", ".gz")):
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data
    text = normalize_text(text, subs)
    if rel.endswith(".json"):
        doc = json.loads(text)
        return json.dumps(mask_json(doc), indent=1, ensure_ascii=False).encode("utf-8")
    if rel.endswith(".svg"):
        for pat in SVG_PATTERNS:
            text = pat.sub(MASK, text)
    if rel.endswith(".html"):
        for pat in HTML_PATTERNS:
            text = pat.sub(lambda m: m.group(1) + MASK + m.group(2), text)
        text = HTML_ROW.sub(
            lambda m: (
                m.group(1)
                + m.group(2)
                + m.group(3)
                + (MASK if _key_ignored(m.group(2)) else m.group(4))
                + m.group(5)
            ),
            text,
        )
    return text.encode("utf-8")


FLOAT_RTOL, FLOAT_ATOL = 1e-5, 1e-6


def float_image_difference(a_path: Path, b_path: Path) -> float | None:
    """The largest voxel difference of two floating-point NIfTI images whose headers are
    identical and whose voxels agree to float32 rounding; None otherwise (an integer image,
    another header, another shape, other NaNs, a larger difference, or not NIfTI)."""
    try:
        a, b = nib.load(a_path), nib.load(b_path)
    except Exception:  # not readable as NIfTI: it stays a byte difference
        return None
    if a.header.binaryblock != b.header.binaryblock:
        return None
    if not np.issubdtype(a.get_data_dtype(), np.floating):
        return None
    da, db = np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)
    if da.shape != db.shape or not np.allclose(
        da, db, rtol=FLOAT_RTOL, atol=FLOAT_ATOL, equal_nan=True
    ):
        return None
    return float(np.nanmax(np.abs(da.astype(np.float64) - db))) if da.size else 0.0


def image_difference(a_path: Path, b_path: Path) -> str:
    """What differs between two NIfTI images, in words."""
    try:
        a, b = nib.load(a_path), nib.load(b_path)
    except Exception:
        return first_difference(a_path.read_bytes(), b_path.read_bytes())
    if a.header.binaryblock != b.header.binaryblock:
        return "in the header"
    da, db = np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)
    if da.shape != db.shape:
        return f"in shape {da.shape} vs {db.shape}"
    n = int(np.count_nonzero(~((da == db) | (np.isnan(da) & np.isnan(db)))))
    diff = np.nanmax(np.abs(da.astype(np.float64) - db)) if da.size else 0.0
    return f"in {n} of {da.size} voxels ({a.get_data_dtype()}, largest difference {diff:.3g})"


def first_difference(a: bytes, b: bytes) -> str:
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    ctx = lambda s: s[max(0, n - 40) : n + 40].decode("utf-8", "replace").replace("\n", "\\n")  # noqa: E731
    return f"at byte {n}: {ctx(a)!r} vs {ctx(b)!r}"


def compare(
    a_root: Path, b_root: Path, pairs: list[tuple[str, str]]
) -> tuple[list[str], dict[str, int]]:
    # the pairs first: one may name the output folder as a run saw it (/data/out in the container)
    subs_a = [(a, f"<PATH{i}>") for i, (a, _) in enumerate(pairs)] + [
        (str(a_root.absolute()), "<OUT>")
    ]
    subs_b = [(b, f"<PATH{i}>") for i, (_, b) in enumerate(pairs)] + [
        (str(b_root.absolute()), "<OUT>")
    ]
    problems: list[str] = []
    counts = {"identical": 0, "masked": 0, "float_close": 0, "float_max_diff": 0.0}
    kinds: dict[str, int] = {}
    a_files, b_files = files(a_root), files(b_root)
    problems += [f"only in {a_root}: {rel}" for rel in sorted(a_files - b_files)]
    problems += [f"only in {b_root}: {rel}" for rel in sorted(b_files - a_files)]
    for rel in sorted(a_files & b_files):
        ext = rel.rsplit("/", 1)[-1].split(".", 1)[-1]
        kinds[ext] = kinds.get(ext, 0) + 1
        da, db = (a_root / rel).read_bytes(), (b_root / rel).read_bytes()
        if da == db:
            counts["identical"] += 1
            continue
        ca, cb = canonical(rel, da, subs_a), canonical(rel, db, subs_b)
        if ca == cb:
            counts["masked"] += 1
        elif (
            rel.endswith((".nii", ".nii.gz"))
            and (diff := float_image_difference(a_root / rel, b_root / rel)) is not None
        ):
            counts["float_close"] += 1
            counts["float_max_diff"] = max(counts["float_max_diff"], diff)
        elif rel.endswith((".nii", ".nii.gz")):
            problems.append(f"differs: {rel} {image_difference(a_root / rel, b_root / rel)}")
        else:
            problems.append(f"differs: {rel} {first_difference(ca, cb)}")
    counts["files"] = len(a_files & b_files)
    counts["kinds"] = kinds  # type: ignore[assignment]
    return problems, counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a_out", type=Path)
    p.add_argument("b_out", type=Path)
    p.add_argument(
        "--paths",
        action="append",
        default=[],
        metavar="A=B",
        help="a path as run A wrote it and as run B wrote it (e.g. the BIDS input)",
    )
    args = p.parse_args(argv)
    pairs = []
    for item in args.paths:
        a, sep, b = item.partition("=")
        if not sep or not a or not b:
            p.error(f"--paths {item!r}: expected A=B")
        pairs.append((a, b))
    for root in (args.a_out, args.b_out):
        if not root.is_dir():
            print(f"compare_exact: {root}: no such folder", file=sys.stderr)
            return 2
    problems, counts = compare(args.a_out, args.b_out, pairs)
    kinds = ", ".join(f"{n} .{k}" for k, n in sorted(counts["kinds"].items()))
    print(
        f"compared {counts['files']} files ({kinds}): {counts['identical']} identical bytes, "
        f"{counts['masked']} identical apart from provenance fields (versions, paths, times)"
        + (
            f", {counts['float_close']} float image(s) equal to float32 rounding "
            f"(largest voxel difference {counts['float_max_diff']:.2g})"
            if counts["float_close"]
            else ""
        )
    )
    for line in problems:
        print(f"  DIFF {line}")
    if not counts["files"] or not any(k.startswith("nii") for k in counts["kinds"]):
        print("  no images to compare: the runs produced nothing")
        return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
