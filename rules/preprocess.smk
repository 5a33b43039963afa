"""Preprocessing: RAS reorientation (no resampling), N4 on a downsampled copy, brain
mask, intensity normalization and, with phase, the high-pass filtered phase.

Like ingestion, a subject with phase gets part-mag/part-phase names:

- without phase (rule preprocess_swi): ``desc-preproc_swi.nii.gz``,
  ``desc-brain_mask.nii.gz`` and the report ``desc-preproc_swi.json``;
- with phase (rule preprocess_swi_phase): ``part-mag_desc-preproc_swi.nii.gz``,
  ``part-mag_desc-brain_mask.nii.gz``, ``part-phase_desc-preproc_swi.nii.gz`` (radians,
  paramagnetic positive; its .json says so) and ``part-mag_desc-preproc_swi.json``.
"""

PREPROCESS_OPTIONS = "--config-sections " + sections("preprocess")


rule preprocess_swi:
    """Reorient, bias-correct, mask and normalize a magnitude without phase."""
    input:
        mag=out_path("ingested_swi"),
    output:
        image=out_path("preproc_swi"),
        mask=out_path("preproc_mask"),
        report=out_path("preproc_swi_json"),
        status=status_path("preprocess_swi"),
    log:
        log_path("preprocess_swi"),
    benchmark:
        benchmark_path("preprocess_swi")
    priority: 1
    conda:
        "../envs/ants.yaml"
    threads: SUM_THREADS
    resources:
        mem_mb=lambda wc, attempt: 6000 * attempt,
        runtime=lambda wc, attempt: 20 * attempt,
    params:
        soft=lambda wc, output: soft_args(
            "preprocess",
            "preprocess_swi",
            wc,
            non_status(output),
            output.status,
            upstream=stage_status("ingest", wc),
        ),
        options=PREPROCESS_OPTIONS,
    shell:
        ": > {log:q}; python -m cmb.failures run {params.soft} --"
        " cmb.preprocess --mag {input.mag:q}"
        " --out-mag {output.image:q} --out-mask {output.mask:q} --out-json {output.report:q}"
        " {params.options} --threads {threads} &>> {log:q}"


rule preprocess_swi_phase:
    """As preprocess_swi, plus the high-pass filtered phase (paramagnetic positive)."""
    input:
        mag=out_path("ingested_mag"),
        phase=out_path("ingested_phase"),
        ingest_report=out_path("ingested_mag_json"),  # Manufacturer: phase sign
    output:
        image=out_path("preproc_mag"),
        mask=out_path("preproc_mag_mask"),
        phase=out_path("preproc_phase"),
        phase_json=out_path("preproc_phase_json"),
        report=out_path("preproc_mag_json"),
        status=status_path("preprocess_swi_phase"),
    log:
        log_path("preprocess_swi_phase"),
    benchmark:
        benchmark_path("preprocess_swi_phase")
    priority: 1
    conda:
        "../envs/ants.yaml"
    threads: SUM_THREADS
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 20 * attempt,
    params:
        soft=lambda wc, output: soft_args(
            "preprocess",
            "preprocess_swi_phase",
            wc,
            non_status(output),
            output.status,
            upstream=stage_status("ingest", wc),
        ),
        options=PREPROCESS_OPTIONS,
    shell:
        ": > {log:q}; python -m cmb.failures run {params.soft} --"
        " cmb.preprocess --mag {input.mag:q} --phase {input.phase:q}"
        " --ingest-report {input.ingest_report:q}"
        " --out-mag {output.image:q} --out-mask {output.mask:q} --out-phase {output.phase:q}"
        " --out-json {output.report:q} {params.options} --threads {threads} &>> {log:q}"
