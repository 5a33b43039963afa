"""Preprocessing: RAS reorientation (no resampling), N4 on a downsampled copy, brain
mask, intensity normalization and, with phase, the high-pass filtered phase.

Like ingestion, a subject with phase gets part-mag/part-phase names:

- without phase (rule preprocess_swi): ``desc-preproc_swi.nii.gz``,
  ``desc-brain_mask.nii.gz`` and the report ``desc-preproc_swi.json``;
- with phase (rule preprocess_swi_phase): ``part-mag_desc-preproc_swi.nii.gz``,
  ``part-mag_desc-brain_mask.nii.gz``, ``part-phase_desc-preproc_swi.nii.gz`` (radians,
  paramagnetic positive; its .json says so) and ``part-mag_desc-preproc_swi.json``.
"""


rule preprocess_swi:
    """Reorient, bias-correct, mask and normalize a magnitude without phase."""
    input:
        mag=INGESTED_SWI,
    output:
        image=PREPROC_SWI,
        mask=PREPROC_MASK,
        report=out_path(desc="preproc", suffix="swi.json"),
        status=status_path("preprocess_swi"),
    params:
        soft=lambda wc, output: soft_args("preprocess", "preprocess_swi", wc, non_status(output),
                                          output.status, upstream=ingest_status(wc)),
        options=PREPROCESS_OPTIONS,
    log:
        log_path("preprocess_swi"),
    benchmark:
        benchmark_path("preprocess_swi")
    threads: ANTS_THREADS
    priority: 1
    resources:
        mem_mb=lambda wc, attempt: 6000 * attempt,
        runtime=lambda wc, attempt: 20 * attempt,
    conda:
        "../envs/ants.yaml"
    shell:
        ": > {log:q}; python -c \"$CMB_SOFT_STAGE\" {params.soft} --"
        " python -m cmb.preprocess --mag {input.mag:q}"
        " --out-mag {output.image:q} --out-mask {output.mask:q} --out-json {output.report:q}"
        " {params.options} --threads {threads} &>> {log:q}"


rule preprocess_swi_phase:
    """As preprocess_swi, plus the high-pass filtered phase (paramagnetic positive)."""
    input:
        mag=INGESTED_MAG,
        phase=INGESTED_PHASE,
        ingest_report=out_path(part="mag", desc="ingested", suffix="swi.json"),  # Manufacturer: phase sign
    output:
        image=PREPROC_MAG,
        mask=PREPROC_MAG_MASK,
        phase=PREPROC_PHASE,
        phase_json=out_path(part="phase", desc="preproc", suffix="swi.json"),
        report=out_path(part="mag", desc="preproc", suffix="swi.json"),
        status=status_path("preprocess_swi_phase"),
    params:
        soft=lambda wc, output: soft_args("preprocess", "preprocess_swi_phase", wc, non_status(output),
                                          output.status, upstream=ingest_status(wc)),
        options=PREPROCESS_OPTIONS,
    log:
        log_path("preprocess_swi_phase"),
    benchmark:
        benchmark_path("preprocess_swi_phase")
    threads: ANTS_THREADS
    priority: 1
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 20 * attempt,
    conda:
        "../envs/ants.yaml"
    shell:
        ": > {log:q}; python -c \"$CMB_SOFT_STAGE\" {params.soft} --"
        " python -m cmb.preprocess --mag {input.mag:q} --phase {input.phase:q}"
        " --ingest-report {input.ingest_report:q}"
        " --out-mag {output.image:q} --out-mask {output.mask:q} --out-phase {output.phase:q}"
        " --out-json {output.report:q} {params.options} --threads {threads} &>> {log:q}"
