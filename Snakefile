"""cmb: cerebral microbleed detection for BIDS cohorts (SWI / T2*-GRE).

    snakemake --profile profiles/local --config bids_dir=/data/bids output_dir=/data/derivatives/cmb

Configuration: config/config.yaml (validated against config/config.schema.yaml).
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config/config.yaml"


include: "rules/common.smk"
include: "rules/ingest.smk"
include: "rules/preprocess.smk"
include: "rules/register.smk"
include: "rules/cohort.smk"


rule all:
    """The failures table (it needs every subject job's status record, so every subject
    job runs), the MNI MARS map and the dataset description."""
    input:
        f"{OUT}/failures.csv",
        MNI_MARS,
        f"{OUT}/dataset_description.json",
    default_target: True
