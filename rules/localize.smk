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


rule localize_cmb:
    """MARS anatomy and the anatomical FP filter per candidate; detections TSV, CMB maps, provenance."""
    input:
        unpack(localize_inputs),
    output:
        **LOCALIZED,
        status=status_path("localize_cmb"),
    params:
        args=localize_args,
        options=LOCALIZE_OPTIONS,
    log:
        log_path("localize_cmb"),
    benchmark:
        benchmark_path("localize_cmb")
    threads: 1
    priority: 4
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/ants.yaml"
    shell:
        ": > {log:q}; python -c \"$CMB_SOFT_STAGE\" {params.args[soft]} --"
        " python -m cmb.localize {params.args[subject]} --candidates {input.table:q}"
        " --candidates-json {input.sidecar:q} --candidates-dseg {input.dseg:q} --prob {input.prob:q}"
        " --input-image {input.input_image:q} --mask {input.mask:q} --mars {input.mars:q}"
        " --register-status {input.register_status:q} --inv-affine {input.inv_affine:q}"
        " --inv-warp {input.inv_warp:q} --quality {input.quality:q} --ingest-report {input.ingest_report:q}"
        " --model-card {input.model_card:q} {params.options}"
        " --out-table {output.table:q} --out-json {output.sidecar:q} --out-dseg {output.dseg:q}"
        " --out-prob {output.prob:q} &>> {log:q}"
