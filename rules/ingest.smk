"""Ingestion: one checked input per subject/session, written as ``desc-ingested``.

Which files a subject gets depends on its input record (cmb.layout has the
names):

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

import json
from pathlib import Path

INGEST_OPTIONS = "--config-sections " + sections("ingest")


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
    args = session_args(wildcards) + [
        "--kind",
        "t2starw",
        "--reason",
        reason,
        "--bids-dir",
        rec.bids_dir,
    ]
    if rec.t1w_alternatives:
        alternatives = [
            {"magnitude": [t], "phase": None, "echo_times": None, "label": f"T1w ({Path(t).name})"}
            for t in rec.t1w_alternatives
        ]
        args += ["--alternatives", json.dumps(alternatives, separators=(",", ":"))]
    return shlex.join(args)


rule ingest_swi:
    """Check the chosen magnitude (echoes combined) of a subject without phase."""
    input:
        mag=lambda wc: record(wc).magnitude,
        alternatives=alternative_inputs,
    output:
        mag=out_path("ingested_swi"),
        report=out_path("ingested_swi_json"),
        status=status_path("ingest_swi"),
    log:
        log_path("ingest_swi"),
    benchmark:
        benchmark_path("ingest_swi")
    conda:
        "../envs/ants.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    params:
        record=ingest_record_args,
        mag=ingest_mag_args,
        options=INGEST_OPTIONS,
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
        mag=out_path("ingested_mag"),
        phase=out_path("ingested_phase"),
        report=out_path("ingested_mag_json"),
        status=status_path("ingest_swi_phase"),
    log:
        log_path("ingest_swi_phase"),
    benchmark:
        benchmark_path("ingest_swi_phase")
    conda:
        "../envs/ants.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 6000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    params:
        record=ingest_record_args,
        options=INGEST_OPTIONS,
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
        t1w=out_path("ingested_t1w"),
        report=out_path("ingested_t1w_json"),
        status=status_path("ingest_t1w"),
    log:
        log_path("ingest_t1w"),
    benchmark:
        benchmark_path("ingest_t1w")
    conda:
        "../envs/ants.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 3000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    params:
        record=ingest_t1w_args,
        options=INGEST_OPTIONS,
    shell:
        "python -m cmb.ingest run {params.record} --mag {input.t1w:q}"
        " --out-mag {output.t1w:q} --out-json {output.report:q} {params.options}"
        " --failure-record {output.status:q} --log {log:q} &> {log:q}"
