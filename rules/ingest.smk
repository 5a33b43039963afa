"""Ingestion: one checked input per subject/session, written as ``desc-ingested``.

Which files a subject gets depends on its input record (rules/common.smk has the
paths and input functions):

- without phase: ``desc-ingested_swi.nii.gz`` (rule ingest_swi);
- with phase: ``part-mag_desc-ingested_swi.nii.gz`` and
  ``part-phase_desc-ingested_swi.nii.gz`` (rule ingest_swi_phase);
- with a T1w: ``desc-ingested_T1w.nii.gz`` (rule ingest_t1w).

Each image gets a JSON report next to it (the chosen files, why, their SHA-256,
fixes applied). Where the plan found several candidates of the input kind (or
several T1w), all are inputs of the job, which keeps the one with the least
ghosting and reports the figures (``candidates_quality``). "swi" names the susceptibility-weighted magnitude whatever the
input kind (SWI, GRE, echo-combined MEGRE or T2starw); the report says which.
"""


rule ingest_swi:
    """Check the chosen magnitude (echoes combined) of a subject without phase."""
    input:
        mag=lambda wc: record(wc).magnitude,
        alternatives=alternative_inputs,
    output:
        mag=INGESTED_SWI,
        report=out_path(desc="ingested", suffix="swi.json"),
        status=status_path("ingest_swi"),
    params:
        record=ingest_record_args,
        mag=ingest_mag_args,
        options=INGEST_OPTIONS,
    log:
        log_path("ingest_swi"),
    benchmark:
        benchmark_path("ingest_swi")
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/ants.yaml"
    shell:
        "python -m cmb.ingest run {params.record} {params.mag}"
        " --out-mag {output.mag:q} --out-json {output.report:q} {params.options}"
        " --failure-record {output.status:q} --log {log:q} &> {log:q}"


rule ingest_swi_phase:
    """Check magnitude and phase, combine echoes, rescale the phase to radians."""
    input:
        mag=lambda wc: record(wc).magnitude,
        phase=lambda wc: record(wc).phase,
        alternatives=alternative_inputs,
    output:
        mag=INGESTED_MAG,
        phase=INGESTED_PHASE,
        report=out_path(part="mag", desc="ingested", suffix="swi.json"),
        status=status_path("ingest_swi_phase"),
    params:
        record=ingest_record_args,
        options=INGEST_OPTIONS,
    log:
        log_path("ingest_swi_phase"),
    benchmark:
        benchmark_path("ingest_swi_phase")
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 6000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/ants.yaml"
    shell:
        "python -m cmb.ingest run {params.record} --mag {input.mag:q} --phase {input.phase:q}"
        " --out-mag {output.mag:q} --out-phase {output.phase:q} --out-json {output.report:q}"
        " {params.options} --failure-record {output.status:q} --log {log:q} &> {log:q}"


rule ingest_t1w:
    """Check the subject's T1w (same session, else subject level)."""
    input:
        t1w=lambda wc: record(wc).t1w,
        alternatives=alternative_t1w_inputs,
    output:
        t1w=INGESTED_T1W,
        report=out_path(desc="ingested", suffix="T1w.json"),
        status=status_path("ingest_t1w"),
    params:
        record=ingest_t1w_args,
        options=INGEST_OPTIONS,
    log:
        log_path("ingest_t1w"),
    benchmark:
        benchmark_path("ingest_t1w")
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 3000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/ants.yaml"
    shell:
        "python -m cmb.ingest run {params.record} --mag {input.t1w:q}"
        " --out-mag {output.t1w:q} --out-json {output.report:q} {params.options}"
        " --failure-record {output.status:q} --log {log:q} &> {log:q}"
