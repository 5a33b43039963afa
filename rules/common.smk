"""Shared by every rule file: the resolved config, the input plan, wildcards, paths, status records.

The config is resolved once (cmb.config.resolve; defaults from config/config.schema.yaml),
and each rule hands its stage the config sections it reads (``sections()``). Paths are the
BIDS names of cmb.layout, built with snakebids ``bids()``; each stage's own paths and input
functions are in its rule file. Every subject job runs as a soft failure
(``python -m cmb.failures run``): a status record always, placeholders when it fails.
"""

import os
import shlex
from types import SimpleNamespace

from snakebids import bids, set_bids_spec
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from cmb import layout
from cmb.config import ConfigError, config_sections_json, resolve
from cmb.ingest_plan import plan_from_config

set_bids_spec("v0_15_0")

# Jobs import cmb from this workflow's own source tree, whatever runs them (the
# project venv, the conda envs in envs/, a cluster node): no version skew between
# the Snakefile and the package.
_paths = (workflow.basedir, os.environ.get("PYTHONPATH"))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in _paths if p)


def _resolve_config():
    """The config, resolved; files given with --configfile win over the workflow's own."""
    cli_files = [str(f) for f in workflow.config_settings.configfiles]
    own = [str(f) for f in workflow.configfiles if str(f) not in cli_files]
    bids_dir = config.get("bids_dir", "")
    subs = os.listdir(bids_dir) if os.path.isdir(bids_dir) else []
    labels = [d[4:] for d in subs if d.startswith("sub-")]
    cli = workflow.config_settings.config or {}
    try:
        files = own + cli_files
        return resolve(
            config, config_files=files, dataset_labels=lambda: labels, from_command_line=cli
        )
    except ConfigError as e:
        raise WorkflowError(str(e)) from None


config.update(_resolve_config())

OUT = os.path.normpath(config["output_dir"])
WORK = os.path.normpath(config["work_dir"] or f"{OUT}-work")
PYBIDS_DB = config["pybids_db_dir"] or os.path.join(WORK, "pybids")
# Threads of a job whose float sums depend on the thread count (ANTs' ITK: N4, registrations;
# PyTorch's CPU kernels: detection): one thread keeps them bit-reproducible.
SUM_THREADS = 1 if config["reproducible"] else 2


def sections(*names):
    """``--config-sections`` of a stage: these config sections as JSON, shell-quoted."""
    return shlex.quote(config_sections_json(config, *names))


# ------------------------------------------------------------------ the input plan


def _plan():
    try:
        return plan_from_config(config, PYBIDS_DB)
    except (ValueError, TypeError, OSError) as e:
        raise WorkflowError(f"cannot plan the inputs of bids_dir {config['bids_dir']}: {e}")


RECORDS = {(r.subject, r.session): r for r in _plan()}
if not RECORDS:
    logger.warning(f"no subjects to process in {config['bids_dir']}")


# ------------------------------------------------------------------ wildcards

# A dataset may mix subjects with and without sessions, so the session level is two
# wildcards that are both empty for a scan without session: {sesdir} is "/ses-<label>"
# (folder) and {sesfile} "_ses-<label>" (file names); constraints in the Snakefile.
SUBJ_DIR = "sub-{subject}{sesdir}"
SUBJ_PREFIX = "sub-{subject}{sesfile}"


def session_label(wildcards):
    """The session label of a job ("1" for ses-1), or None."""
    return wildcards.sesfile.removeprefix("_ses-") or None


def record(wildcards):
    """The input record (cmb.ingest_plan.InputRecord) of a job's subject/session."""
    return RECORDS[(wildcards.subject, session_label(wildcards))]


def has_phase(wildcards):
    return record(wildcards).has_phase


def has_t1w(wildcards):
    return record(wildcards).has_t1w


def record_wildcards(rec):
    """Wildcards of one input record, usable wherever a job's wildcards are."""
    ses = rec.session
    sesdir, sesfile = (f"/ses-{ses}", f"_ses-{ses}") if ses else ("", "")
    return SimpleNamespace(subject=rec.subject, sesdir=sesdir, sesfile=sesfile)


def session_args(wildcards):
    """``--subject X [--session Y]`` for a cmb CLI."""
    ses = session_label(wildcards)
    return ["--subject", wildcards.subject] + (["--session", ses] if ses else [])


# ------------------------------------------------------------------ paths


def out_path(name):
    """The path pattern of derivative ``name`` (cmb.layout.DERIVATIVES) or of an entities dict."""
    ents = layout.entities(name) if isinstance(name, str) else dict(name)
    folder = layout.datatype(name) if isinstance(name, str) else "anat"
    return bids(root=f"{OUT}/{SUBJ_DIR}", datatype=folder or None, prefix=SUBJ_PREFIX, **ents)


def run_record(folder, suffix):
    """Path pattern of one rule's per-subject run record under ``<output_dir>/<folder>/<rule>/``."""
    return lambda rule: bids(
        root=f"{OUT}/{folder}/{rule}/{SUBJ_DIR}", prefix=SUBJ_PREFIX, suffix=suffix
    )


log_path = run_record("logs", "log.txt")
benchmark_path = run_record("benchmarks", "benchmark.tsv")
status_path = run_record("status", "status.json")  # status record (cmb.failures)


def fill(pattern, wildcards):
    """``pattern`` with the job's wildcards filled in."""
    wc = wildcards
    return pattern.format(subject=wc.subject, sesdir=wc.sesdir, sesfile=wc.sesfile)


PATTERNS = {name: out_path(name) for name in layout.DERIVATIVES}  # bids() once, not per job


def ingested(wildcards):
    """A subject's ingested files: ``mag``, ``phase`` and ``t1w`` (when it has them)."""
    phase = {"mag": "ingested_mag", "phase": "ingested_phase"}
    names = phase if has_phase(wildcards) else {"mag": "ingested_swi"}
    names.update({"t1w": "ingested_t1w"} if has_t1w(wildcards) else {})
    return {k: fill(PATTERNS[v], wildcards) for k, v in names.items()}


def preprocessed(wildcards):
    """A subject's preprocessed files: ``image``, ``mask`` and ``phase`` (when it has one)."""
    phase = {"image": "preproc_mag", "mask": "preproc_mag_mask", "phase": "preproc_phase"}
    names = phase if has_phase(wildcards) else {"image": "preproc_swi", "mask": "preproc_mask"}
    return {k: fill(PATTERNS[v], wildcards) for k, v in names.items()}


# ------------------------------------------------------------------ status records


# Every subject job writes a status record per stage. failures.csv depends on all of
# them, which pulls every subject job into the DAG; a downstream stage is given its
# upstream records and is skipped (placeholders) when one failed.
def stage_status(stage, wildcards):
    """The status records of one stage of a subject (a list: a stage may have none or two)."""
    rules = layout.status_rules(stage, has_phase(wildcards), has_t1w(wildcards))
    return [fill(status_path(rule), wildcards) for rule in rules]


def subject_stage_records(wildcards):
    """A subject's status records in pipeline order (what its report and counts row show)."""
    return [
        p for stage in layout.STAGES if stage != "report" for p in stage_status(stage, wildcards)
    ]


def subject_status_records():
    """Every status record of every subject job (the inputs of failures.csv)."""
    wcs = [record_wildcards(rec) for rec in RECORDS.values()]
    return [p for wc in wcs for stage in layout.STAGES for p in stage_status(stage, wc)]


def non_status(output):
    """A job's declared outputs without its status record."""
    return [o for o in output if o != output.status]


def soft_args(stage, rule, wildcards, outputs, record_path, upstream=()):
    """``python -m cmb.failures run`` arguments (shell-quoted) for one subject's ``stage`` run by
    ``rule``: it writes ``outputs`` (placeholders on failure) and its status ``record_path``."""
    log = fill(log_path(rule), wildcards)
    args = [stage, *session_args(wildcards), "--record", record_path, "--log", log]
    args += ["--outputs", *([outputs] if isinstance(outputs, str) else outputs)]
    return shlex.join(args + (["--upstream", *upstream] if upstream else []))
