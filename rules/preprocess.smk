"""Preprocessing: RAS reorientation (no resampling), N4 on a downsampled copy, brain
mask, intensity normalization and, with phase, the high-pass filtered phase.

Like ingestion, a subject with phase gets part-mag/part-phase names:

- without phase (rule preprocess_swi): ``desc-preproc_swi.nii.gz``,
  ``desc-brain_mask.nii.gz`` and the report ``desc-preproc_swi.json``;
- with phase (rule preprocess_swi_phase): ``part-mag_desc-preproc_swi.nii.gz``,
  ``part-mag_desc-brain_mask.nii.gz``, ``part-phase_desc-preproc_swi.nii.gz`` (radians,
  paramagnetic positive; its .json says so) and ``part-mag_desc-preproc_swi.json``.
"""

PREPROC_SWI = out_path(desc="preproc", suffix="swi.nii.gz")
PREPROC_MASK = out_path(desc="brain", suffix="mask.nii.gz")
PREPROC_MAG = out_path(part="mag", desc="preproc", suffix="swi.nii.gz")
PREPROC_MAG_MASK = out_path(part="mag", desc="brain", suffix="mask.nii.gz")
PREPROC_PHASE = out_path(part="phase", desc="preproc", suffix="swi.nii.gz")


def preprocessed(wildcards):
    """The preprocessed files of a subject: ``image``, ``mask``, ``phase`` (if any), status."""
    if has_phase(wildcards):
        return {
            "image": fill(PREPROC_MAG, wildcards),
            "mask": fill(PREPROC_MAG_MASK, wildcards),
            "phase": fill(PREPROC_PHASE, wildcards),
            "preprocess_status": fill(status_path("preprocess_swi_phase"), wildcards),
        }
    return {
        "image": fill(PREPROC_SWI, wildcards),
        "mask": fill(PREPROC_MASK, wildcards),
        "preprocess_status": fill(status_path("preprocess_swi"), wildcards),
    }


def preprocess_status(wildcards):
    return [preprocessed(wildcards)["preprocess_status"]]


SUBJECT_STATUS.append(preprocess_status)


def _preprocess_options():
    c = config["preprocess"]
    return [
        "--paramagnetic-phase", c["paramagnetic_phase"],
        "--highpass-sigma-mm", repr(float(c["highpass_sigma_mm"])),
        "--n4-spacing-mm", repr(float(c["n4_spacing_mm"])),
        "--n4-iterations", ",".join(str(int(i)) for i in c["n4_iterations"]),
        "--mask-work-mm", repr(float(c["mask_work_mm"])),
        "--mask-grow-mm", repr(float(c["mask_grow_mm"])),
        "--normalize", c["normalize"],
    ]


PREPROCESS_OPTIONS = _preprocess_options()


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
    threads: 2
    resources:
        mem_mb=lambda wc, attempt: 6000 * attempt,
        runtime=lambda wc, attempt: 20 * attempt,
    conda:
        "../envs/ants.yaml"
    shell:
        ": > {log:q}; python -c \"$CMB_SOFT_STAGE\" {params.soft:q} --"
        " python -m cmb.preprocess --mag {input.mag:q}"
        " --out-mag {output.image:q} --out-mask {output.mask:q} --out-json {output.report:q}"
        " {params.options:q} --threads {threads} &>> {log:q}"


rule preprocess_swi_phase:
    """As preprocess_swi, plus the high-pass filtered phase (paramagnetic positive)."""
    input:
        mag=INGESTED_MAG,
        phase=INGESTED_PHASE,
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
    threads: 2
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 20 * attempt,
    conda:
        "../envs/ants.yaml"
    shell:
        ": > {log:q}; python -c \"$CMB_SOFT_STAGE\" {params.soft:q} --"
        " python -m cmb.preprocess --mag {input.mag:q} --phase {input.phase:q}"
        " --out-mag {output.image:q} --out-mask {output.mask:q} --out-phase {output.phase:q}"
        " --out-json {output.report:q} {params.options:q} --threads {threads} &>> {log:q}"
