"""cmb: cerebral microbleed detection for BIDS cohorts (SWI / T2*-GRE).

    snakemake --profile profiles/local --config bids_dir=/data/bids output_dir=/data/derivatives/cmb

Configuration: config/config.yaml (validated against config/config.schema.yaml).
"""

import threading

from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config/config.yaml"


include: "rules/common.smk"


# Snakemake's job-rate limiter (--max-jobs-per-timespan, default 100/1s) re-arms a timer
# on every scheduler pass, and every finished job adds one more such chain of passes,
# each of which stats the inputs of every ready job: in a 200-subject local run the
# scheduler alone took 64% of a core (docs/benchmarks.md; snakemake PR #3744). The local
# profile sets 100000/30s, which passes the same jobs with a thirtieth of the passes. Its
# timers are not daemon threads (Python's threading.Timer), so Snakemake would wait up to
# 30 s before it exits: once the run is over, the pending ones are cancelled.
def cancel_pending_timers():
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()


onsuccess:
    cancel_pending_timers()


onerror:
    cancel_pending_timers()


# With --sdm apptainer every job runs in this image (containers/build.sh; docs/cluster.md).
container: config["container"] or None


# BIDS labels are alphanumeric; {sesdir}/{sesfile} are "/ses-<label>"/"_ses-<label>" or
# both empty (rules/common.smk).
wildcard_constraints:
    subject="[a-zA-Z0-9]+",
    sesdir="(/ses-[a-zA-Z0-9]+)?",
    sesfile="(_ses-[a-zA-Z0-9]+)?",


# Per-subject rules carry rising `priority:` down the pipeline (preprocess 1 ... report 5),
# and build_mars_map, which every registration waits for, the highest: among ready jobs
# the most downstream runs first, so subjects finish one after another instead of every
# registration running before the first detection.
include: "rules/ingest.smk"
include: "rules/preprocess.smk"
include: "rules/register.smk"
include: "rules/detect.smk"
include: "rules/train.smk"
include: "rules/localize.smk"
include: "rules/report.smk"
include: "rules/cohort.smk"


# The failures table (it needs every subject job's status record, so every subject job
# runs), the MNI MARS map, the dataset description, and the cohort tables
# (cohort/cmb_counts.csv, cmb_detections.csv) and QC page (cohort/cmb_report.html).
rule all:
    default_target: True
    input:
        f"{OUT}/failures.csv",
        MNI_MARS,
        f"{OUT}/dataset_description.json",
        COHORT["counts"],
        COHORT["detections"],
        COHORT_REPORT["html"],
