"""Anatomical localization of each candidate and the per-subject CMB outputs.

localize_cmb (cmb.localize): per subject, each candidate of the detect stage gets its
MARS category, region and hemisphere (majority vote over its voxels in the native
MARS map; ties: centre voxel, then a fixed order), the finer Desikan-Killiany label,
MNI coordinates and input-image voxel indices; the anatomical false-positive filter
(config ``localize``) marks candidates centred in CSF/ventricles or outside the brain
as rejected, with the reason. Outputs::

    sub-X_desc-cmb_detections.tsv    one row per candidate (cmb.tables.DETECTION_COLUMNS)
    sub-X_desc-cmb_detections.json   provenance (versions, git commit, model card and config
                                     hashes, input checksums), QC summary, column dictionary
    sub-X_label-CMB_dseg.nii.gz      counted CMBs (is_cmb) labelled with cmb_id, input grid
    sub-X_label-CMB_dseg.tsv         its label table
    sub-X_label-CMB_probseg.nii.gz   candidate confidence (likelihood) map, input grid

A subject whose registration failed still gets its table (anatomy ``n/a``); one whose
detection failed or was skipped gets a "skipped" record and placeholders.
"""

import hashlib
import json

from snakemake import __version__ as SNAKEMAKE_VERSION

LOCALIZED = {
    "table": out_path("detections_table"),
    "sidecar": out_path("detections_sidecar"),
    "dseg": out_path("cmb_dseg"),
    "dseg_tsv": out_path("cmb_dseg_tsv"),
    "prob": out_path("cmb_prob"),
}
CONFIG_SHA256 = hashlib.sha256(
    json.dumps(config, sort_keys=True, default=str, separators=(",", ":")).encode("utf-8")
).hexdigest()
LOCALIZE_OPTIONS = shlex.join(
    ["--config-sha256", CONFIG_SHA256, "--snakemake-version", SNAKEMAKE_VERSION]
)
LOCALIZE_OPTIONS += " --config-sections " + sections("localize", "mars")


def localize_inputs(wildcards):
    mag_json = "ingested_mag_json" if has_phase(wildcards) else "ingested_swi_json"
    return {
        **{k: fill(v, wildcards) for k, v in DETECTED.items()},
        "detect_status": stage_status("detect", wildcards)[0],
        "input_image": ingested(wildcards)["mag"],
        "ingest_report": fill(
            PATTERNS[mag_json], wildcards
        ),  # input checksums, acquisition metadata
        "mask": preprocessed(wildcards)["mask"],
        **{
            k: fill(REGISTERED[k], wildcards) for k in ("mars", "inv_affine", "inv_warp", "quality")
        },
        "register_status": stage_status("register", wildcards)[0],
        "model_card": MODEL_FILES[1],
    }


def localize_args(wildcards, input, output):
    return {
        "soft": soft_args(
            "localize",
            "localize_cmb",
            wildcards,
            non_status(output),
            output.status,
            stage_status("detect", wildcards),
        ),
        "subject": shlex.join(session_args(wildcards)),
    }


rule localize_cmb:
    """MARS anatomy and the anatomical FP filter per candidate; detections TSV, CMB maps, provenance."""
    input:
        unpack(localize_inputs),
    output:
        **LOCALIZED,
        status=status_path("localize_cmb"),
    log:
        log_path("localize_cmb"),
    benchmark:
        benchmark_path("localize_cmb")
    priority: 4
    conda:
        "../envs/ants.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    params:
        args=localize_args,
        options=LOCALIZE_OPTIONS,
    shell:
        ": > {log:q}; python -m cmb.failures run {params.args[soft]} --"
        " cmb.localize {params.args[subject]} --candidates {input.table:q}"
        " --candidates-json {input.sidecar:q} --candidates-dseg {input.dseg:q} --prob {input.prob:q}"
        " --input-image {input.input_image:q} --mask {input.mask:q} --mars {input.mars:q}"
        " --register-status {input.register_status:q} --inv-affine {input.inv_affine:q}"
        " --inv-warp {input.inv_warp:q} --quality {input.quality:q} --ingest-report {input.ingest_report:q}"
        " --model-card {input.model_card:q} {params.options}"
        " --out-table {output.table:q} --out-json {output.sidecar:q} --out-dseg {output.dseg:q}"
        " --out-prob {output.prob:q} &>> {log:q}"
