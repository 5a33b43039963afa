"""cmb: cerebral microbleed detection for BIDS cohorts (SWI / T2*-GRE).

    snakemake --profile profiles/local --config bids_dir=/data/bids output_dir=/data/derivatives/cmb

Configuration: config/config.yaml (validated against config/config.schema.yaml).
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config/config.yaml"


include: "rules/common.smk"


# With --sdm apptainer every job runs in this image (containers/cmb.def; docs/cluster.md).
container: config["container"] or None


# BIDS labels are alphanumeric; {sesdir}/{sesfile} are "/ses-<label>"/"_ses-<label>" or
# both empty (rules/common.smk).
wildcard_constraints:
    subject="[a-zA-Z0-9]+",
    sesdir="(/ses-[a-zA-Z0-9]+)?",
    sesfile="(_ses-[a-zA-Z0-9]+)?",


include: "rules/ingest.smk"
include: "rules/preprocess.smk"
include: "rules/register.smk"
include: "rules/detect.smk"
include: "rules/train.smk"
include: "rules/localize.smk"
include: "rules/report.smk"
include: "rules/cohort.smk"


rule all:
    """The failures table (it needs every subject job's status record, so every subject
    job runs), the MNI MARS map, the dataset description, and the cohort tables
    (cohort/cmb_counts.csv, cmb_detections.csv) and QC page (cohort/cmb_report.html)."""
    input:
        f"{OUT}/failures.csv",
        MNI_MARS,
        f"{OUT}/dataset_description.json",
        COHORT["counts"],
        COHORT["detections"],
        COHORT_REPORT["html"],
    default_target: True
