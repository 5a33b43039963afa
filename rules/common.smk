"""Shared by every rule file: config validation, input planning, paths, soft failures.

- The config is validated against config/config.schema.yaml (defaults filled in).
  Participant labels are strings: a YAML ``02`` (read as the integer 2) is turned
  back into "02". Nested ``--config`` values arrive as strings and are typed by the
  schema (cmb.config_values).
- ``plan_inputs`` (cmb.ingest_plan) chooses one input per subject/session when the DAG
  is built; the records decide which optional files (phase, T1w) each subject gets.
- Paths are BIDS names from snakebids ``bids()`` under ``sub-{subject}{sesdir}/``
  (``{sesdir}``/``{sesfile}`` are empty for a scan without session).
"""

import functools
import json
import os
import shlex
from pathlib import Path
import textwrap

import jsonschema
import yaml
from snakebids import bids, set_bids_spec
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

from cmb import __version__ as CMB_VERSION
from cmb.config_values import coerce_to_schema
from cmb.ingest_plan import plan_inputs
from cmb.parcellation import ParcellationError, find_parcellation
from cmb.template import TEMPLATE_NAME

set_bids_spec("v0_15_0")

# Jobs import cmb from this workflow's own source tree, whatever runs them (the
# project venv, the conda envs in envs/, a cluster node): no version skew between
# the Snakefile and the package.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p
)

LABEL_KEYS = ("participant_label", "exclude_participant_label")


# ------------------------------------------------------------------ config


def _raw_config_value(key):
    """``key`` as written in the config files (every YAML scalar read as text), or None.

    Files given with --configfile win over the workflow's own config file.
    """
    cli_files = [str(f) for f in workflow.config_settings.configfiles]
    own = [str(f) for f in workflow.configfiles if str(f) not in cli_files]
    value = None
    for path in own + cli_files:
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.load(f, Loader=yaml.BaseLoader)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(raw, dict) and key in raw:
            value = raw[key]
    return value


def _match_subject(number, key):
    """The one ``sub-*`` label of the dataset that reads as ``number`` ("02" for 2)."""
    try:
        labels = [d[4:] for d in os.listdir(config["bids_dir"]) if d.startswith("sub-")]
    except OSError:
        labels = []
    matches = sorted(lab for lab in labels if lab.isdigit() and int(lab) == number)
    if len(matches) > 1:
        raise WorkflowError(
            f"{key}: {number} matches several subjects ({', '.join('sub-' + m for m in matches)}); "
            f"quote the label, e.g. '{matches[0]}'"
        )
    return matches[0] if matches else str(number)


def coerce_labels(cfg):
    """Participant labels as lists of strings; integers (YAML 02, --config x=02) made text again."""
    from_cli = workflow.config_settings.config or {}
    for key in LABEL_KEYS:
        value = cfg.get(key)
        if value is None or value == "":
            cfg[key] = []
            continue
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        is_int = [isinstance(v, int) and not isinstance(v, bool) for v in items]
        if any(is_int):
            raw = None if key in from_cli else _raw_config_value(key)
            raw = raw if isinstance(raw, list) else [raw]
            if len(raw) == len(items) and all(isinstance(r, str) for r in raw):
                items = [r if i else v for r, v, i in zip(raw, items, is_int)]
            else:  # --config participant_label=02 arrives as 2: find the subject it names
                items = [_match_subject(v, key) if i else v for v, i in zip(items, is_int)]
        cfg[key] = items


def validate_config(cfg):
    """Validate ``cfg`` in place (defaults filled); one clear line on error."""
    coerce_labels(cfg)
    with open(os.path.join(workflow.basedir, "config", "config.schema.yaml"), encoding="utf-8") as f:
        cfg.update(coerce_to_schema(dict(cfg), yaml.safe_load(f)))  # --config a='{b: false}' gives "false"
    try:
        validate(cfg, "../config/config.schema.yaml")
    except WorkflowError as e:
        cause = e.__cause__ or e.__context__
        if not isinstance(cause, jsonschema.ValidationError):
            raise
        where = ".".join(str(p) for p in cause.absolute_path) or "top level"
        raise WorkflowError(
            f"invalid configuration ({where}): {cause.message}. "
            f"Allowed keys and values are described in config/config.schema.yaml."
        ) from None


validate_config(config)

OUT = os.path.normpath(config["output_dir"])
WORK = os.path.normpath(config["work_dir"] or f"{OUT}-work")
PYBIDS_DB = config["pybids_db_dir"] or os.path.join(WORK, "pybids")
# Threads of an ANTs job (N4, registrations): multi-threaded ITK sums are not bit-reproducible.
ANTS_THREADS = 1 if config["reproducible"] else 2
MNI = TEMPLATE_NAME  # MNI152NLin2009cAsym


# ------------------------------------------------------------------ planning


def _plan():
    try:
        return plan_inputs(
            config["bids_dir"],
            PYBIDS_DB,
            participant_label=config["participant_label"] or None,
            exclude_participant_label=config["exclude_participant_label"] or None,
            preference=config["ingest"]["preference"],
            pin_entities=config["ingest"]["pin_entities"],
            body_parts=config["ingest"]["body_parts"],
        )
    except (ValueError, TypeError, OSError) as e:
        raise WorkflowError(f"cannot plan the inputs of bids_dir {config['bids_dir']}: {e}") from None


RECORDS = {(r.subject, r.session): r for r in _plan()}
if not RECORDS:
    logger.warning(f"no subjects to process in {config['bids_dir']}")

# Subject/session wildcards. A dataset may mix subjects with and without sessions,
# so the session level is two wildcards that are both empty for a scan without
# session: {sesdir} is "/ses-<label>" (folder) and {sesfile} "_ses-<label>" (file names).
# Their wildcard_constraints are in the Snakefile.
SUBJ_DIR = "sub-{subject}{sesdir}"
SUBJ_PREFIX = "sub-{subject}{sesfile}"


def session_label(wildcards):
    """The session label of a job ("1" for ses-1), or None."""
    return wildcards.sesfile[len("_ses-"):] or None


def record(wildcards):
    """The input record (cmb.ingest_plan.InputRecord) of a job's subject/session."""
    return RECORDS[(wildcards.subject, session_label(wildcards))]


def has_phase(wildcards):
    return record(wildcards).has_phase


def has_t1w(wildcards):
    return record(wildcards).has_t1w


# ------------------------------------------------------------------ paths


def out_path(datatype="anat", **entities):
    """A per-subject derivative path pattern, e.g. ``out_path(desc="preproc", suffix="swi.nii.gz")``
    is ``<output_dir>/sub-{subject}{sesdir}/anat/sub-{subject}{sesfile}_desc-preproc_swi.nii.gz``."""
    return bids(root=f"{OUT}/{SUBJ_DIR}", datatype=datatype, prefix=SUBJ_PREFIX, **entities)


def log_path(rule):
    return bids(root=f"{OUT}/logs/{rule}/{SUBJ_DIR}", prefix=SUBJ_PREFIX, suffix="log.txt")


def benchmark_path(rule):
    return bids(root=f"{OUT}/benchmarks/{rule}/{SUBJ_DIR}", prefix=SUBJ_PREFIX, suffix="benchmark.tsv")


def status_path(rule):
    """Status record (cmb.failures) of one rule for one subject/session."""
    return bids(root=f"{OUT}/status/{rule}/{SUBJ_DIR}", prefix=SUBJ_PREFIX, suffix="status.json")


def fill(pattern, wildcards):
    """``pattern`` with the job's wildcards filled in."""
    return pattern.format(**dict(wildcards.items()))


def session_args(wildcards):
    """``--subject X [--session Y]`` for a cmb CLI."""
    args = ["--subject", wildcards.subject]
    if session_label(wildcards):
        args += ["--session", session_label(wildcards)]
    return args


class RecordWildcards(dict):
    """Wildcards of one input record, usable wherever a job's wildcards are."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def record_wildcards(rec):
    ses = rec.session
    return RecordWildcards(
        subject=rec.subject, sesdir=f"/ses-{ses}" if ses else "", sesfile=f"_ses-{ses}" if ses else ""
    )


# ------------------------------------------------------------------ files of each stage

# ingest (rules/ingest.smk). A subject with phase gets part-mag/part-phase names;
# "swi" names the susceptibility-weighted magnitude whatever the input kind.
INGESTED_SWI = out_path(desc="ingested", suffix="swi.nii.gz")
INGESTED_MAG = out_path(part="mag", desc="ingested", suffix="swi.nii.gz")
INGESTED_PHASE = out_path(part="phase", desc="ingested", suffix="swi.nii.gz")
INGESTED_T1W = out_path(desc="ingested", suffix="T1w.nii.gz")

# preprocess (rules/preprocess.smk)
PREPROC_SWI = out_path(desc="preproc", suffix="swi.nii.gz")
PREPROC_MASK = out_path(desc="brain", suffix="mask.nii.gz")
PREPROC_MAG = out_path(part="mag", desc="preproc", suffix="swi.nii.gz")
PREPROC_MAG_MASK = out_path(part="mag", desc="brain", suffix="mask.nii.gz")
PREPROC_PHASE = out_path(part="phase", desc="preproc", suffix="swi.nii.gz")

# register (rules/register.smk)
MNI_MARS = bids(root=f"{OUT}/tpl-{MNI}", prefix=f"tpl-{MNI}", res=str(config["mars"]["resolution_mm"]),
                desc="mars", suffix="dseg.nii.gz")
MNI_MARS_TSV = MNI_MARS.replace(".nii.gz", ".tsv")
SOURCE_SPACE = "SWI"  # space label of the subject's image in transform names
XFM_PREFIX = f"{OUT}/{SUBJ_DIR}/anat/{SUBJ_PREFIX}"  # cmb.register names its transforms from it


def xfm_path(source, target, ext):
    return out_path(**{"from": source, "to": target, "mode": "image"}, suffix=f"xfm.{ext}")


REGISTERED = {
    "fwd_affine": xfm_path(SOURCE_SPACE, MNI, "mat"),
    "fwd_warp": xfm_path(SOURCE_SPACE, MNI, "nii.gz"),
    "inv_affine": xfm_path(MNI, SOURCE_SPACE, "mat"),
    "inv_warp": xfm_path(MNI, SOURCE_SPACE, "nii.gz"),
    "mars": out_path(desc="mars", suffix="dseg.nii.gz"),
    "mars_tsv": out_path(desc="mars", suffix="dseg.tsv"),
    "quality": xfm_path(SOURCE_SPACE, MNI, "json"),  # sidecar: registration quality, timings
}
# detect (rules/detect.smk): every candidate of the screen with its calibrated
# confidence, on the preprocessed grid (cmb.detect).
DETECTED = {
    "table": out_path(desc="candidates", suffix="cmb.tsv"),
    "sidecar": out_path(desc="candidates", suffix="cmb.json"),
    "dseg": out_path(desc="candidates", suffix="dseg.nii.gz"),
    "prob": out_path(desc="cmb", suffix="probseg.nii.gz"),
}
QC_FIGURES = {
    "brain_mask": out_path(datatype="figures", desc="brainmask", suffix="swi.svg"),
    "registration": out_path(datatype="figures", desc="registration", suffix="swi.svg"),
}


# ------------------------------------------------------------------ input functions


def ingested(wildcards):
    """A subject's ingested files: ``mag``, ``phase`` and ``t1w`` (when it has them)."""
    if has_phase(wildcards):
        files = {"mag": fill(INGESTED_MAG, wildcards), "phase": fill(INGESTED_PHASE, wildcards)}
    else:
        files = {"mag": fill(INGESTED_SWI, wildcards)}
    if has_t1w(wildcards):
        files["t1w"] = fill(INGESTED_T1W, wildcards)
    return files


def preprocessed(wildcards):
    """A subject's preprocessed files: ``image``, ``mask`` and ``phase`` (when it has one)."""
    if has_phase(wildcards):
        return {
            "image": fill(PREPROC_MAG, wildcards),
            "mask": fill(PREPROC_MAG_MASK, wildcards),
            "phase": fill(PREPROC_PHASE, wildcards),
        }
    return {"image": fill(PREPROC_SWI, wildcards), "mask": fill(PREPROC_MASK, wildcards)}


def register_inputs(wildcards):
    files = {k: v for k, v in preprocessed(wildcards).items() if k in ("image", "mask")}
    if has_t1w(wildcards):
        files["t1w"] = ingested(wildcards)["t1w"]
    found, _ = parcellation(wildcards)
    if found is not None:
        files["parcellation"] = str(found)
    return files


def parcellation(wildcards):
    """The session's own parcellation under mars.parcellation_dir (cmb.parcellation), and why there is none."""
    if not config["mars"]["parcellation_dir"]:
        return None, None
    return _find_parcellation(wildcards.subject, session_label(wildcards))


@functools.lru_cache(maxsize=None)  # input functions run several times per job: search the folder once
def _find_parcellation(subject, session):
    root = config["mars"]["parcellation_dir"]
    try:
        found = find_parcellation(root, subject, session, config["mars"]["parcellation_desc"])
    except ParcellationError as err:
        return None, f"{err}; the atlas route is used"
    if found is None:
        return None, (f"no parcellation of sub-{subject}{f' ses-{session}' if session else ''} under {root} "
                      "(mars.parcellation_dir); the atlas route is used")
    return found, None


def qc_inputs(wildcards):
    files = {k: v for k, v in preprocessed(wildcards).items() if k in ("image", "mask")}
    files["mars"] = fill(REGISTERED["mars"], wildcards)
    return files


# ------------------------------------------------------------------ status records

# Every subject job writes a status record (cmb.failures) per stage. failures.csv
# depends on all of them, which pulls every subject job into the DAG; the downstream
# stages read their upstream records to skip a subject whose input failed.


def ingest_status(wildcards):
    """Status record of the subject's magnitude/phase ingestion."""
    return [fill(status_path("ingest_swi_phase" if has_phase(wildcards) else "ingest_swi"), wildcards)]


def ingest_t1w_status(wildcards):
    return [fill(status_path("ingest_t1w"), wildcards)] if has_t1w(wildcards) else []


def preprocess_status(wildcards):
    return [fill(status_path("preprocess_swi_phase" if has_phase(wildcards) else "preprocess_swi"), wildcards)]


def register_status(wildcards):
    return [fill(status_path("register_to_mni"), wildcards)]


def detect_status(wildcards):
    return [fill(status_path("detect_cmb"), wildcards)]


def qc_status(wildcards):
    return [fill(status_path(f"plot_{name}"), wildcards) for name in QC_FIGURES]


def subject_status_records():
    """Every status record of every subject job (the inputs of failures.csv)."""
    stages = (ingest_status, ingest_t1w_status, preprocess_status, register_status, detect_status, qc_status,
              localize_status, report_status)
    out = []
    for rec in RECORDS.values():
        wc = record_wildcards(rec)
        out += [p for stage in stages for p in stage(wc)]
    return out


# ------------------------------------------------------------------ command-line arguments

# These return argument strings already quoted for the shell (shlex.join), so rules
# insert them as {params.x} (no :q). Quoting once here, not in every formatting of a
# job's command, keeps `snakemake -n` fast on large cohorts.


def ingest_record_args(wildcards):
    """``cmb.ingest run`` arguments that come from the input record."""
    rec = record(wildcards)
    args = session_args(wildcards) + ["--kind", rec.kind or "none", "--reason", rec.reason]
    args += ["--bids-dir", rec.bids_dir]
    if rec.echo_times:
        args += ["--echo-times", *(repr(t) for t in rec.echo_times)]
    if rec.alternatives:
        args += ["--alternatives", json.dumps(rec.alternatives, separators=(",", ":"))]
    return shlex.join(args)


def alternative_inputs(wildcards):
    """The plan's other candidates of the subject's input kind (ingestion reads them all)."""
    rec = record(wildcards)
    return [f for f in rec.input_files() if f not in rec.magnitude and f not in (rec.phase or ())]


def alternative_t1w_inputs(wildcards):
    rec = record(wildcards)
    return [f for f in rec.t1w_alternatives if f != rec.t1w]


def ingest_mag_args(wildcards, input):
    """``--mag FILE...`` (echoes in order), or nothing for a subject without usable input."""
    return shlex.join(["--mag", *input.mag]) if input.mag else ""


def ingest_t1w_args(wildcards):
    """``cmb.ingest run`` arguments for the T1w: it is checked as a single-echo magnitude
    (the "t2starw" kind); the reason names it as the T1w."""
    rec = record(wildcards)
    reason = f"T1w of {rec.participant_id}: {rec.reason.split('; ')[-1]}"
    args = session_args(wildcards) + ["--kind", "t2starw", "--reason", reason, "--bids-dir", rec.bids_dir]
    if rec.t1w_alternatives:
        alternatives = [{"magnitude": [t], "phase": None, "echo_times": None, "label": f"T1w ({Path(t).name})"}
                        for t in rec.t1w_alternatives]
        args += ["--alternatives", json.dumps(alternatives, separators=(",", ":"))]
    return shlex.join(args)


def register_args(wildcards, input, output):
    upstream = preprocess_status(wildcards) + ingest_t1w_status(wildcards)
    return {
        "soft": soft_args("register", "register_to_mni", wildcards, non_status(output), output.status, upstream),
        "t1w": shlex.join(["--t1w", input.t1w]) if "t1w" in input.keys() else "",
        "prefix": shlex.quote(fill(XFM_PREFIX, wildcards)),
        "parcellation": shlex.join(_parcellation_args(wildcards, input)),
    }


def _parcellation_args(wildcards, input):
    m = config["mars"]
    if not m["parcellation_dir"]:
        return []
    args = ["--parcellation-root", m["parcellation_dir"], "--parcellation-min-dice", repr(float(m["parcellation_min_dice"]))]
    for key in ("juxtacortical_mm", "insula_juxtacortical_mm", "capsule_mm", "label_search_mm"):
        args += ["--" + key.replace("_", "-"), repr(float(m[key]))]
    if "parcellation" in input.keys():
        return args + ["--parcellation", input.parcellation]
    return args + ["--parcellation-refused", parcellation(wildcards)[1]]


def qc_args(wildcards, output):
    return {
        "brain_mask": soft_args("plot_brain_mask", "plot_qc", wildcards, output.brain_mask,
                                output.brain_mask_status, preprocess_status(wildcards)),
        "registration": soft_args("plot_registration", "plot_qc", wildcards, output.registration,
                                  output.registration_status, register_status(wildcards)),
    }


def detect_args(wildcards, input, output):
    return {
        "soft": soft_args("detect", "detect_cmb", wildcards, non_status(output), output.status,
                          preprocess_status(wildcards)),
        "phase": shlex.join(["--phase", input.phase]) if "phase" in input.keys() else "",
    }


def _ingest_options():
    c = config["ingest"]
    args = [
        "--phase-units", c["phase_units"],
        "--echo-method", c["echo_method"],
        "--min-fov-mm", repr(float(c["min_fov_mm"] or 0)),
        "--max-voxel-mm", repr(float(c["max_voxel_mm"])),
        "--max-nonfinite-fraction", repr(float(c["max_nonfinite_fraction"])),
    ]
    if c["phase_echo"] is not None:
        args += ["--phase-echo", str(c["phase_echo"])]
    return args


def _preprocess_options():
    c = config["preprocess"]
    return [
        "--paramagnetic-phase", c["paramagnetic_phase"],
        "--highpass-sigma-mm", repr(float(c["highpass_sigma_mm"])),
        "--n4-spacing-mm", repr(float(c["n4_spacing_mm"])),
        "--n4-iterations", ",".join(str(int(i)) for i in c["n4_iterations"]),
        "--mask-work-mm", repr(float(c["mask_work_mm"])),
        "--mask-grow-mm", repr(float(c["mask_grow_mm"])),
        "--normalize", c["normalize"],
    ]


def _register_options():
    c = config["register"]
    args = [
        "--source-space", SOURCE_SPACE,
        "--step-mm", str(c["step_mm"]),
        "--syn-iterations", ",".join(str(int(i)) for i in c["syn_iterations"]),
        "--interpolation", c["label_interpolation"],
    ]
    return args + ([] if c["syn"] else ["--no-syn"])


def _detect_options():
    c = config["detection"]
    args = ["--model", MODEL_DIR, "--batch-size", str(c["batch_size"])]
    if c["threshold"] is not None:
        args += ["--threshold", repr(float(c["threshold"]))]
    args += [] if c["use_gpu"] else ["--cpu"]
    args += [] if c["vessel_rule"] else ["--no-vessel-rule"]
    return args + ([] if c["use_phase"] else ["--no-phase"])


MODEL_DIR = config["detection"]["model_dir"] or os.path.join(workflow.basedir, "cmb", "detect", "weights", "default")
MODEL_FILES = [os.path.join(MODEL_DIR, "model.safetensors"), os.path.join(MODEL_DIR, "model_card.json")]


# train_model / evaluate_detections (rules/train.smk)
TRUTH_DIR = config["training"]["truth_dir"] or os.path.join(config["bids_dir"], "derivatives", "cmb-truth")
MODEL_OUT = config["training"]["model_out"] or f"{OUT}/model"
EVALUATION = {name: f"{OUT}/evaluation/{name}" for name in
              ("subjects.csv", "cohort.csv", "cohort.json", "froc.csv", "froc.png", "detections.csv")}


def _train_args():
    c = config["training"]
    args = ["--truth", TRUTH_DIR, "--epochs", str(c["epochs"]), "--steps-per-epoch", str(c["steps_per_epoch"]),
            "--val-fraction", repr(float(c["val_fraction"])), "--seed", str(c["seed"])]
    args += [] if config["detection"]["use_gpu"] else ["--cpu"]
    return args + (["--init", c["init_model"]] if c["init_model"] else [])


def operating_threshold(wildcards):
    """The detection threshold in use: config detection.threshold, else the model card's."""
    if config["detection"]["threshold"] is not None:
        return repr(float(config["detection"]["threshold"]))
    import json

    with open(MODEL_FILES[1], encoding="utf-8") as f:
        return repr(float(json.load(f)["threshold"]))


DATASET_DESCRIPTION = {
    "Name": "cmb: cerebral microbleed detection",
    "BIDSVersion": "1.10.0",
    "DatasetType": "derivative",
    "GeneratedBy": [
        {
            "Name": "cmb",
            "Version": CMB_VERSION,
            "Description": f"Snakemake workflow: ingestion, preprocessing, registration to {MNI}, "
            "MARS regions in native space",
        }
    ],
    "SourceDatasets": [{"URL": f"file://{os.path.abspath(config['bids_dir'])}"}],
}
INGEST_OPTIONS = shlex.join(_ingest_options())
PREPROCESS_OPTIONS = shlex.join(_preprocess_options())
REGISTER_OPTIONS = shlex.join(_register_options())
DETECT_OPTIONS = shlex.join(_detect_options())
TRAIN_ARGS = shlex.join(_train_args())


# ------------------------------------------------------------------ soft failures

# Stages whose CLI does not write status records itself (unlike `cmb.ingest run
# --failure-record`) run under this wrapper: cmb.failures.run_stage with the stage's
# command as its work. A failed command leaves a "failed" record whose message is the
# last line it logged; a failed/skipped upstream stage gives a "skipped" record. Either
# way the declared outputs become empty placeholders and the job succeeds, so the rest
# of the cohort goes on. A machine fault (disk full, read-only output, out of memory;
# cmb.failures.ResourceError) instead fails the job, so that a rerun redoes it. The
# program text is fixed; every value is an argument:
#   python -c "$CMB_SOFT_STAGE" STAGE --subject S [--session X] --record R --log L
#       --outputs O... [--upstream U...] -- COMMAND...
os.environ["CMB_SOFT_STAGE"] = textwrap.dedent(
    """
    import argparse, re, subprocess, sys
    from cmb.failures import ResourceError, run_stage
    p = argparse.ArgumentParser(prog="cmb-soft-stage")
    p.add_argument("stage")
    p.add_argument("--subject", required=True)
    p.add_argument("--session")
    p.add_argument("--record", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--outputs", nargs="*", default=[])
    p.add_argument("--upstream", nargs="*", default=[])
    sep = sys.argv.index("--")
    a, cmd = p.parse_args(sys.argv[1:sep]), sys.argv[sep + 1:]
    def work():
        with open(a.log, "a") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if rc:
            with open(a.log, errors="replace") as log:
                lines = [line.strip() for line in log if line.strip()]
            last = lines[-1] if lines else f"{cmd[:3]} exited with status {rc}"
            m = re.match(r"^(?:[\\w.]+\\.)?(\\w+(?:Error|Exception)): (.+)$", last)
            raise type(m.group(1), (RuntimeError,), {})(m.group(2)) if m else RuntimeError(last)
    try:
        run_stage(a.stage, a.subject, a.session, a.outputs, a.record, a.log, work, upstream=a.upstream)
    except ResourceError as e:  # disk full etc.: the job fails, so that a rerun redoes it
        sys.exit(f"error: {e}")
    """
)


def non_status(output):
    """A job's declared outputs without its status record."""
    return [o for o in output if o != output.status]


def soft_args(stage, rule, wildcards, outputs, record, upstream=()):
    """Wrapper arguments (before ``--``, shell-quoted) for one subject's stage run by
    ``rule``: the stage writes ``outputs`` (placeholders on failure) and its status
    ``record``."""
    args = [stage, "--subject", wildcards.subject]
    if session_label(wildcards):
        args += ["--session", session_label(wildcards)]
    args += ["--record", record, "--log", fill(log_path(rule), wildcards)]
    args += ["--outputs", *([outputs] if isinstance(outputs, str) else outputs)]
    if upstream:
        args += ["--upstream", *upstream]
    return shlex.join(args)


# ------------------------------------------------------------------ localize, reports, cohort tables

# localize (rules/localize.smk): the detections table (one row per candidate, MARS
# anatomy, anatomical FP filter), the CMB label map and likelihood map on the input
# image's grid, and the provenance sidecar (cmb.localize).
LOCALIZED = {
    "table": out_path(desc="cmb", suffix="detections.tsv"),
    "sidecar": out_path(desc="cmb", suffix="detections.json"),
    "dseg": out_path(label="CMB", suffix="dseg.nii.gz"),
    "dseg_tsv": out_path(label="CMB", suffix="dseg.tsv"),
    "prob": out_path(label="CMB", suffix="probseg.nii.gz"),
}
# reports (rules/report.smk): one self-contained HTML per subject/session, one per cohort
SUBJECT_REPORT = f"{OUT}/{SUBJ_DIR}/{SUBJ_PREFIX}_report.html"
COHORT = {
    "counts": f"{OUT}/cohort/cmb_counts.csv",
    "counts_json": f"{OUT}/cohort/cmb_counts.json",
    "detections": f"{OUT}/cohort/cmb_detections.csv",
    "detections_json": f"{OUT}/cohort/cmb_detections.json",
    "counts_long": f"{OUT}/cohort/cmb_counts_long.csv",
    "counts_long_json": f"{OUT}/cohort/cmb_counts_long.json",
    "ratings": f"{OUT}/cohort/cmb_ratings_template.tsv",
}
# the reviewer loop (docs/review.md): NiiVue once per output folder; verdict files, read only
VIEWER = {name: f"{OUT}/viewer/{name}" for name in ("niivue.umd.js", "LICENSE", "README.md")}
VERDICTS_DIR = config["review"]["verdicts_dir"] or os.path.join(os.path.dirname(OUT) or ".", "cmb-verdicts")


def verdict_files():
    """Every reviewer's verdict file under VERDICTS_DIR (found when the DAG is built)."""
    from cmb.verdicts import find_verdict_files

    return [str(p) for files in find_verdict_files(VERDICTS_DIR).values() for p in files]


COHORT_REPORT = {
    "html": f"{OUT}/cohort/cmb_report.html",
    "counts_figure": f"{OUT}/cohort/figures/cmb_count_distribution.svg",
    "regions_figure": f"{OUT}/cohort/figures/cmb_region_counts.svg",
}


def _config_sha256():
    import hashlib
    import json

    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


CONFIG_SHA256 = _config_sha256()


def localize_status(wildcards):
    return [fill(status_path("localize_cmb"), wildcards)]


def report_status(wildcards):
    return [fill(status_path("report_subject"), wildcards)]


def ingest_report(wildcards):
    """The ingest JSON report of the subject's magnitude (input checksums, acquisition metadata)."""
    part = {"part": "mag"} if has_phase(wildcards) else {}
    return fill(out_path(**part, desc="ingested", suffix="swi.json"), wildcards)


def localize_inputs(wildcards):
    return {
        **{k: fill(v, wildcards) for k, v in DETECTED.items()},
        "detect_status": detect_status(wildcards)[0],
        "input_image": ingested(wildcards)["mag"],
        "ingest_report": ingest_report(wildcards),
        "mask": preprocessed(wildcards)["mask"],
        **{k: fill(REGISTERED[k], wildcards) for k in ("mars", "inv_affine", "inv_warp", "quality")},
        "register_status": register_status(wildcards)[0],
        "model_card": MODEL_FILES[1],
    }


def localize_args(wildcards, input, output):
    return {
        "soft": soft_args("localize", "localize_cmb", wildcards, non_status(output), output.status,
                          detect_status(wildcards)),
        "subject": shlex.join(session_args(wildcards)),
    }


def _localize_options():
    c = config["localize"]
    from snakemake import __version__ as snakemake_version

    m = config["mars"]
    args = ["--min-parenchyma-fraction", repr(float(c["min_parenchyma_fraction"])),
            "--registration-uncertainty-mm", repr(float(m["registration_uncertainty_mm"])),
            "--label-search-mm", repr(float(m["label_search_mm"])),
            "--borderline-min-share", repr(float(m["borderline_min_share"])),
            "--config-sha256", CONFIG_SHA256, "--snakemake-version", snakemake_version]
    args += [] if c["reject_csf"] else ["--keep-csf"]
    return args + ([] if c["reject_outside_brain"] else ["--keep-outside-brain"])


LOCALIZE_OPTIONS = shlex.join(_localize_options())


def subject_stage_records(wildcards):
    """A subject's status records in pipeline order (what its report and counts row show)."""
    return (ingest_status(wildcards) + ingest_t1w_status(wildcards) + preprocess_status(wildcards)
            + register_status(wildcards) + detect_status(wildcards) + localize_status(wildcards)
            + qc_status(wildcards))


def report_inputs(wildcards):
    files = {k: v for k, v in preprocessed(wildcards).items()}
    files.update({
        "detections": fill(LOCALIZED["table"], wildcards),
        "sidecar": fill(LOCALIZED["sidecar"], wildcards),
        "candidates_dseg": fill(DETECTED["dseg"], wildcards),
        "mars": fill(REGISTERED["mars"], wildcards),
        "records": subject_stage_records(wildcards),
    })
    files.update({f"figure_{k}": fill(v, wildcards) for k, v in QC_FIGURES.items()})
    files["viewer_js"] = VIEWER["niivue.umd.js"]
    if has_t1w(wildcards):  # a layer of the viewer
        files["t1w"] = ingested(wildcards)["t1w"]
    return files


def report_args(wildcards, input, output):
    args = session_args(wildcards) + ["--records", *input.records]
    if "phase" in input.keys():
        args += ["--phase", input.phase]
    if "t1w" in input.keys():
        args += ["--t1w", input.t1w]
    args += ["--embed-budget-bytes", str(config["review"]["embed_budget_bytes"])]
    return {
        "soft": soft_args("report", "report_subject", wildcards, output.html, output.status),
        "args": shlex.join(args),
    }


def subject_reports():
    return [fill(SUBJECT_REPORT, record_wildcards(rec)) for rec in RECORDS.values()]


def cohort_table_inputs():
    out = []
    for rec in RECORDS.values():
        wc = record_wildcards(rec)
        out += [fill(LOCALIZED["table"], wc), fill(LOCALIZED["sidecar"], wc)]
    return out + subject_status_records()


def cohort_subjects():
    """cmb.cohort_tables.SubjectFiles of every subject/session, in a fixed order."""
    from cmb.cohort_tables import SubjectFiles, read_sites

    sites = read_sites(os.path.join(config["bids_dir"], "participants.tsv"))
    out = []
    for key in sorted(RECORDS, key=lambda k: (k[0], k[1] or "")):
        rec, wc = RECORDS[key], record_wildcards(RECORDS[key])
        out.append(SubjectFiles(
            participant_id=rec.subject, session_id=rec.session,
            detections=fill(LOCALIZED["table"], wc), sidecar=fill(LOCALIZED["sidecar"], wc),
            records=subject_stage_records(wc), site=sites.get(f"sub-{rec.subject}"),
            phase=preprocessed(wc).get("phase"),
        ))
    return out


LOCALIZE_QC = config["localize"]["qc"]
