"""Registration to MNI and the MARS region map in each subject's native space.

- build_mars_map: the MNI-space MARS map (dseg + label table), once per run.
- register_to_mni: per subject, subject->MNI affine + SyN at a coarse resolution
  (through the T1w when there is one: SWI->T1w rigid, T1w->MNI), transforms in ANTs
  formats for both directions, a quality JSON, and the MARS map warped to the
  native preprocessed grid (nearest neighbour, labels preserved).
- plot_qc: per subject, two QC figures in ``figures/``: the brain mask over the
  preprocessed image, and the native MARS region edges over it (registration).

Transform files (``antsApplyTransforms -t`` lists, see cmb.register.XfmPaths)::

    sub-X_from-SWI_to-MNI152NLin2009cAsym_mode-image_xfm.{mat,nii.gz}   subject -> MNI
    sub-X_from-MNI152NLin2009cAsym_to-SWI_mode-image_xfm.{mat,nii.gz}   MNI -> subject
    sub-X_from-SWI_to-T1w_mode-image_xfm.mat                            with a T1w
"""


rule build_mars_map:
    """MARS regions (lobar, deep, infratentorial per hemisphere; CSF) on the MNI grid."""
    output:
        dseg=MNI_MARS,
        tsv=MNI_MARS_TSV,
    params:
        juxtacortical_mm=config["mars"]["juxtacortical_mm"],
        capsule_mm=config["mars"]["capsule_mm"],
        resolution_mm=config["mars"]["resolution_mm"],
        insula_juxtacortical_mm=config["mars"]["insula_juxtacortical_mm"],
        label_search_mm=config["mars"]["label_search_mm"],
    log:
        f"{OUT}/logs/build_mars_map/log.txt",
    benchmark:
        f"{OUT}/benchmarks/build_mars_map/benchmark.tsv"
    threads: 1
    priority: 10  # every registration waits for it; at 0 it queued behind all the ingests
    resources:
        mem_mb=lambda wc, attempt: 6000 * attempt,
        runtime=lambda wc, attempt: 15 * attempt,
    conda:
        "../envs/ants.yaml"
    shell:
        "python -m cmb.mars_map --out-dseg {output.dseg:q} --out-tsv {output.tsv:q}"
        " --juxtacortical-mm {params.juxtacortical_mm} --capsule-mm {params.capsule_mm}"
        " --resolution-mm {params.resolution_mm}"
        " --insula-juxtacortical-mm {params.insula_juxtacortical_mm}"
        " --label-search-mm {params.label_search_mm} &> {log:q}"


rule register_to_mni:
    """Subject->MNI affine + SyN (via the T1w if any), both directions, quality; native MARS map."""
    input:
        unpack(register_inputs),
        mars=MNI_MARS,
    output:
        **REGISTERED,
        status=status_path("register_to_mni"),
    params:
        args=register_args,
        options=REGISTER_OPTIONS,
    log:
        log_path("register_to_mni"),
    benchmark:
        benchmark_path("register_to_mni")
    threads: ANTS_THREADS
    priority: 2
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    conda:
        "../envs/ants.yaml"
    shell:
        # ANTsPy leaves ~185 MB per registration in $TMPDIR: each job gets its own, removed at exit
        ": > {log:q}; "
        'export TMPDIR="$(mktemp -d "${{TMPDIR:-/tmp}}/cmb-register.XXXXXX")"; '
        "trap 'rm -rf \"$TMPDIR\"' EXIT; "
        "python -c \"$CMB_SOFT_STAGE\" {params.args[soft]} --"
        " python -m cmb.registration --image {input.image:q} --mask {input.mask:q} {params.args[t1w]}"
        " --out-prefix {params.args[prefix]} --out-quality {output.quality:q}"
        " --mars-mni {input.mars:q} --out-mars {output.mars:q} --out-mars-tsv {output.mars_tsv:q}"
        " {params.options} {params.args[parcellation]} --threads {threads} &>> {log:q}"


rule plot_qc:
    """QC figures: brain mask over the preprocessed image; MARS region edges over it."""
    input:
        unpack(qc_inputs),
    output:
        brain_mask=report(QC_FIGURES["brain_mask"], category="QC: brain mask"),
        registration=report(QC_FIGURES["registration"], category="QC: registration"),
        brain_mask_status=status_path("plot_brain_mask"),
        registration_status=status_path("plot_registration"),
    params:
        soft=qc_args,
    log:
        log_path("plot_qc"),
    benchmark:
        benchmark_path("plot_qc")
    threads: 1
    priority: 3
    resources:
        mem_mb=lambda wc, attempt: 3000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/report.yaml"
    shell:
        ": > {log:q}; python -c \"$CMB_SOFT_STAGE\" {params.soft[brain_mask]} --"
        " python -m cmb.qc_figures mask --image {input.image:q} --mask {input.mask:q}"
        " --out {output.brain_mask:q} &>> {log:q};"
        " python -c \"$CMB_SOFT_STAGE\" {params.soft[registration]} --"
        " python -m cmb.qc_figures registration --image {input.image:q} --dseg {input.mars:q}"
        " --out {output.registration:q} &>> {log:q}"
