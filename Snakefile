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
    """Every subject's outputs, the dataset description and the failures table."""
    input:
        subject_targets(),
        MNI_MARS,
        f"{OUT}/dataset_description.json",
        f"{OUT}/failures.csv",
    default_target: True
