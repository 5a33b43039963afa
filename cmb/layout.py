"""Names of the workflow's per-scan derivative files: one home for the rules and for Python.

Each derivative is a set of BIDS entities under ``<output_dir>/sub-<label>[/ses-<label>]/<datatype>/``,
named ``sub-<label>[_ses-<label>]_<entities>_<suffix>``. The rules build their path patterns
from :data:`DERIVATIVES` with snakebids ``bids()`` (rules/common.smk ``out_path``); Python code
that starts from one derivative and needs another of the same scan uses :func:`sibling`.
The entities are listed in the order ``bids()`` writes them (tests/test_layout.py checks).

A subject with phase gets ``part-mag``/``part-phase`` names; "swi" names the
susceptibility-weighted magnitude whatever the input kind (SWI, GRE, echo-combined MEGRE
or T2starw).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "DERIVATIVES",
    "SOURCE_SPACE",
    "STAGES",
    "datatype",
    "entities",
    "file_name",
    "scan_prefix",
    "sibling",
    "status_rules",
    "transform",
]

SOURCE_SPACE = "SWI"  # space label of the subject's image in transform names

DERIVATIVES: dict[str, dict[str, str]] = {
    # ingest (cmb.ingest): the chosen input, checked, and its report
    "ingested_swi": {"desc": "ingested", "suffix": "swi.nii.gz"},
    "ingested_swi_json": {"desc": "ingested", "suffix": "swi.json"},
    "ingested_mag": {"part": "mag", "desc": "ingested", "suffix": "swi.nii.gz"},
    "ingested_mag_json": {"part": "mag", "desc": "ingested", "suffix": "swi.json"},
    "ingested_phase": {"part": "phase", "desc": "ingested", "suffix": "swi.nii.gz"},
    "ingested_t1w": {"desc": "ingested", "suffix": "T1w.nii.gz"},
    "ingested_t1w_json": {"desc": "ingested", "suffix": "T1w.json"},
    # preprocess (cmb.preprocess)
    "preproc_swi": {"desc": "preproc", "suffix": "swi.nii.gz"},
    "preproc_swi_json": {"desc": "preproc", "suffix": "swi.json"},
    "preproc_mask": {"desc": "brain", "suffix": "mask.nii.gz"},
    "preproc_mag": {"part": "mag", "desc": "preproc", "suffix": "swi.nii.gz"},
    "preproc_mag_json": {"part": "mag", "desc": "preproc", "suffix": "swi.json"},
    "preproc_mag_mask": {"part": "mag", "desc": "brain", "suffix": "mask.nii.gz"},
    "preproc_phase": {"part": "phase", "desc": "preproc", "suffix": "swi.nii.gz"},
    "preproc_phase_json": {"part": "phase", "desc": "preproc", "suffix": "swi.json"},
    # register (cmb.registration): the native MARS map (transforms: :func:`transform`)
    "mars": {"desc": "mars", "suffix": "dseg.nii.gz"},
    "mars_tsv": {"desc": "mars", "suffix": "dseg.tsv"},
    # detect (cmb.detect): every candidate with its calibrated confidence, preprocessed grid
    "candidates_table": {"desc": "candidates", "suffix": "cmb.tsv"},
    "candidates_sidecar": {"desc": "candidates", "suffix": "cmb.json"},
    "candidates_dseg": {"desc": "candidates", "suffix": "dseg.nii.gz"},
    "candidates_prob": {"desc": "cmb", "suffix": "probseg.nii.gz"},
    # localize (cmb.localize): the detections table and maps on the input image's grid
    "detections_table": {"desc": "cmb", "suffix": "detections.tsv"},
    "detections_sidecar": {"desc": "cmb", "suffix": "detections.json"},
    "cmb_dseg": {"label": "CMB", "suffix": "dseg.nii.gz"},
    "cmb_dseg_tsv": {"label": "CMB", "suffix": "dseg.tsv"},
    "cmb_prob": {"label": "CMB", "suffix": "probseg.nii.gz"},
    # QC figures (cmb.qc_figures) and the subject page (cmb.report)
    "figure_brain_mask": {"desc": "brainmask", "suffix": "swi.svg"},
    "figure_registration": {"desc": "registration", "suffix": "swi.svg"},
    "report": {"suffix": "report.html"},
}
_DATATYPE = {"figure_brain_mask": "figures", "figure_registration": "figures", "report": ""}


#: A subject's stages in pipeline order; each has the status records of :func:`status_rules`.
STAGES = ("ingest", "ingest_t1w", "preprocess", "register", "detect", "localize", "qc", "report")


def status_rules(stage: str, has_phase: bool, has_t1w: bool) -> list[str]:
    """The workflow rules that write a status record (cmb.failures) for ``stage`` of a subject.

    Under ``<output_dir>/status/<rule>/``; a stage may have none (no T1w) or two (the QC figures).

    >>> status_rules("preprocess", has_phase=True, has_t1w=False), status_rules("ingest_t1w", True, False)
    (['preprocess_swi_phase'], [])
    """
    rules = {
        "ingest": ["ingest_swi_phase" if has_phase else "ingest_swi"],
        "ingest_t1w": ["ingest_t1w"] if has_t1w else [],
        "preprocess": ["preprocess_swi_phase" if has_phase else "preprocess_swi"],
        "register": ["register_to_mni"],
        "detect": ["detect_cmb"],
        "localize": ["localize_cmb"],
        "qc": ["plot_brain_mask", "plot_registration"],
        "report": ["report_subject"],
    }
    return rules[stage]


def entities(name: str) -> dict[str, str]:
    """The BIDS entities (and suffix) of derivative ``name``.

    >>> entities("preproc_phase")
    {'part': 'phase', 'desc': 'preproc', 'suffix': 'swi.nii.gz'}
    """
    if name not in DERIVATIVES:
        raise KeyError(
            f"{name!r} is not a derivative of cmb.layout (known: {', '.join(DERIVATIVES)})"
        )
    return dict(DERIVATIVES[name])


def datatype(name: str) -> str:
    """The folder of derivative ``name`` under the scan's folder ("anat", "figures", or "" for the scan folder)."""
    entities(name)
    return _DATATYPE.get(name, "anat")


def transform(source: str, target: str, ext: str) -> dict[str, str]:
    """The entities of an image transform from ``source`` to ``target`` space (``ext``: mat, nii.gz, json).

    >>> file_name("sub-01", transform("SWI", "MNI152NLin2009cAsym", "mat"))
    'sub-01_from-SWI_to-MNI152NLin2009cAsym_mode-image_xfm.mat'
    """
    return {"from": source, "to": target, "mode": "image", "suffix": f"xfm.{ext}"}


def file_name(prefix: str, name_or_entities: str | dict[str, str]) -> str:
    """The file name of a derivative of the scan ``prefix`` (``sub-01`` or ``sub-01_ses-1``).

    >>> file_name("sub-01_ses-1", "candidates_sidecar")
    'sub-01_ses-1_desc-candidates_cmb.json'
    """
    ents = (
        entities(name_or_entities) if isinstance(name_or_entities, str) else dict(name_or_entities)
    )
    suffix = ents.pop("suffix")
    return "_".join([prefix, *(f"{k}-{v}" for k, v in ents.items()), suffix])


_PREFIX = re.compile(r"^(sub-[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?)_")


def scan_prefix(path: str | Path) -> str:
    """``sub-<label>[_ses-<label>]`` of a derivative file name.

    >>> scan_prefix("out/sub-01/ses-1/anat/sub-01_ses-1_desc-cmb_detections.tsv")
    'sub-01_ses-1'
    """
    m = _PREFIX.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path}: not a cmb derivative name (sub-<label>[_ses-<label>]_...)")
    return m.group(1)


def sibling(path: str | Path, name: str) -> Path:
    """Derivative ``name`` of the same scan as the derivative file ``path``.

    In a derivatives folder the other file may be in another datatype folder; files kept
    side by side elsewhere (a copy, a benchmark's folder) stay side by side.

    >>> sibling("out/sub-01/anat/sub-01_desc-candidates_cmb.tsv", "candidates_sidecar").as_posix()
    'out/sub-01/anat/sub-01_desc-candidates_cmb.json'
    >>> sibling("out/sub-01/anat/sub-01_desc-cmb_detections.tsv", "figure_brain_mask").as_posix()
    'out/sub-01/figures/sub-01_desc-brainmask_swi.svg'
    >>> sibling("tables/sub-01_desc-candidates_cmb.tsv", "candidates_sidecar").as_posix()
    'tables/sub-01_desc-candidates_cmb.json'
    """
    path = Path(path)
    here = path.parent
    if here.name in ("anat", "figures"):
        folder = datatype(name)
        here = here.parent / folder if folder else here.parent
    return here / file_name(scan_prefix(path), name)
