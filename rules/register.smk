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

MARS_RES = config["mars"]["resolution_mm"]
MNI_MARS = bids(root=f"{OUT}/tpl-{MNI}", prefix=f"tpl-{MNI}", res=str(MARS_RES), desc="mars",
                suffix="dseg.nii.gz")
MNI_MARS_TSV = MNI_MARS.replace(".nii.gz", ".tsv")

SOURCE_SPACE = "SWI"
XFM_PREFIX = f"{OUT}/{SUBJ_DIR}/anat/{SUBJ_PREFIX}"


def xfm(source, target, ext):
    return out_path(**{"from": source, "to": target, "mode": "image"}, suffix=f"xfm.{ext}")


REGISTERED = {
    "fwd_affine": xfm(SOURCE_SPACE, MNI, "mat"),
    "fwd_warp": xfm(SOURCE_SPACE, MNI, "nii.gz"),
    "inv_affine": xfm(MNI, SOURCE_SPACE, "mat"),
    "inv_warp": xfm(MNI, SOURCE_SPACE, "nii.gz"),
    "mars": out_path(desc="mars", suffix="dseg.nii.gz"),
    "mars_tsv": out_path(desc="mars", suffix="dseg.tsv"),
    "quality": xfm(SOURCE_SPACE, MNI, "json"),  # sidecar: registration quality, timings
}


def register_status(wildcards):
    return [fill(status_path("register_to_mni"), wildcards)]


QC_FIGURES = {
    "brain_mask": out_path(datatype="figures", desc="brainmask", suffix="swi.svg"),
    "registration": out_path(datatype="figures", desc="registration", suffix="swi.svg"),
}


def qc_status(wildcards):
    return [fill(status_path(f"plot_{name}"), wildcards) for name in QC_FIGURES]


SUBJECT_STATUS.extend([register_status, qc_status])


def register_inputs(wildcards):
    files = preprocessed(wildcards)
    inputs = {"image": files["image"], "mask": files["mask"]}
    if has_t1w(wildcards):
        inputs["t1w"] = ingested(wildcards)["t1w"]
    return inputs


def register_args(wildcards, input, output):
    upstream = preprocess_status(wildcards) + ingest_t1w_status(wildcards)
    soft = soft_args("register", "register_to_mni", wildcards, non_status(output), output.status,
                     upstream)
    t1w = ["--t1w", input.t1w] if "t1w" in input.keys() else []
    return {"soft": soft, "t1w": t1w, "prefix": fill(XFM_PREFIX, wildcards)}


def _register_options():
    c = config["register"]
    args = ["--source-space", SOURCE_SPACE, "--step-mm", str(c["step_mm"]),
            "--syn-iterations", ",".join(str(int(i)) for i in c["syn_iterations"]),
            "--interpolation", c["label_interpolation"]]
    return args + ([] if c["syn"] else ["--no-syn"])


REGISTER_OPTIONS = _register_options()


rule build_mars_map:
    """MARS regions (lobar, deep, infratentorial per hemisphere; CSF) on the MNI grid."""
    output:
        dseg=MNI_MARS,
        tsv=MNI_MARS_TSV,
    params:
        juxtacortical_mm=config["mars"]["juxtacortical_mm"],
        capsule_mm=config["mars"]["capsule_mm"],
        resolution_mm=MARS_RES,
    log:
        f"{OUT}/logs/build_mars_map/log.txt",
    benchmark:
        f"{OUT}/benchmarks/build_mars_map/benchmark.tsv"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 6000 * attempt,
        runtime=lambda wc, attempt: 15 * attempt,
    conda:
        "../envs/ants.yaml"
    shell:
        "python -m cmb.mars_map --out-dseg {output.dseg:q} --out-tsv {output.tsv:q}"
        " --juxtacortical-mm {params.juxtacortical_mm} --capsule-mm {params.capsule_mm}"
        " --resolution-mm {params.resolution_mm} &> {log:q}"


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
    threads: 2
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    conda:
        "../envs/ants.yaml"
    shell:
        # ANTsPy leaves ~185 MB per registration in $TMPDIR: each job gets its own, removed at exit
        ": > {log:q}; " + job_tmpdir("register") +
        "python -c \"$CMB_SOFT_STAGE\" {params.args[soft]:q} --"
        " python -m cmb.register --image {input.image:q} --mask {input.mask:q} {params.args[t1w]:q}"
        " --out-prefix {params.args[prefix]:q} --out-quality {output.quality:q}"
        " --mars-mni {input.mars:q} --out-mars {output.mars:q} --out-mars-tsv {output.mars_tsv:q}"
        " {params.options:q} --threads {threads} &>> {log:q}"


rule plot_qc:
    """QC figures: brain mask over the preprocessed image; MARS region edges over it."""
    input:
        unpack(lambda wc: {k: preprocessed(wc)[k] for k in ("image", "mask")}),
        mars=REGISTERED["mars"],
    output:
        brain_mask=report(QC_FIGURES["brain_mask"], category="QC: brain mask"),
        registration=report(QC_FIGURES["registration"], category="QC: registration"),
        brain_mask_status=status_path("plot_brain_mask"),
        registration_status=status_path("plot_registration"),
    params:
        soft=lambda wc, output: {
            name: soft_args(f"plot_{name}", "plot_qc", wc, output[name], output[f"{name}_status"], upstream)
            for name, upstream in (("brain_mask", preprocess_status(wc)), ("registration", register_status(wc)))
        },
    log:
        log_path("plot_qc"),
    benchmark:
        benchmark_path("plot_qc")
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 3000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/report.yaml"
    shell:
        ": > {log:q}; python -c \"$CMB_SOFT_STAGE\" {params.soft[brain_mask]:q} --"
        " python -m cmb.qc_figures mask --image {input.image:q} --mask {input.mask:q}"
        " --out {output.brain_mask:q} &>> {log:q};"
        " python -c \"$CMB_SOFT_STAGE\" {params.soft[registration]:q} --"
        " python -m cmb.qc_figures registration --image {input.image:q} --dseg {input.mars:q}"
        " --out {output.registration:q} &>> {log:q}"
