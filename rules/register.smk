"""Registration to MNI and the MARS region map in each subject's native space.

- build_mars_map: the MNI-space MARS map (dseg + label table), once per run.
- register_to_mni: per subject, subject->MNI affine + SyN at a coarse resolution
  (through the T1w when there is one: SWI->T1w rigid, T1w->MNI), transforms in ANTs
  formats for both directions, a quality JSON, and the MARS map warped to the
  native preprocessed grid (nearest neighbour, labels preserved).
- plot_qc: per subject, two QC figures in ``figures/``: the brain mask over the
  preprocessed image, and the native MARS region edges over it (registration).

Transform files (``antsApplyTransforms -t`` lists, see cmb.registration.XfmPaths)::

    sub-X_from-SWI_to-MNI152NLin2009cAsym_mode-image_xfm.{mat,nii.gz}   subject -> MNI
    sub-X_from-MNI152NLin2009cAsym_to-SWI_mode-image_xfm.{mat,nii.gz}   MNI -> subject
    sub-X_from-SWI_to-T1w_mode-image_xfm.mat                            with a T1w
"""

import functools

from cmb.parcellation import ParcellationError, find_parcellation
from cmb.template import TEMPLATE_NAME

MNI = TEMPLATE_NAME  # MNI152NLin2009cAsym
MNI_MARS = bids(
    root=f"{OUT}/tpl-{MNI}",
    prefix=f"tpl-{MNI}",
    res=str(config["mars"]["resolution_mm"]),
    desc="mars",
    suffix="dseg.nii.gz",
)
MNI_MARS_TSV = MNI_MARS.replace(".nii.gz", ".tsv")
XFM_PREFIX = f"{OUT}/{SUBJ_DIR}/anat/{SUBJ_PREFIX}"  # the registration names its transforms from it
REGISTERED = {
    "fwd_affine": out_path(layout.transform(layout.SOURCE_SPACE, MNI, "mat")),
    "fwd_warp": out_path(layout.transform(layout.SOURCE_SPACE, MNI, "nii.gz")),
    "inv_affine": out_path(layout.transform(MNI, layout.SOURCE_SPACE, "mat")),
    "inv_warp": out_path(layout.transform(MNI, layout.SOURCE_SPACE, "nii.gz")),
    "mars": out_path("mars"),
    "mars_tsv": out_path("mars_tsv"),
    "quality": out_path(
        layout.transform(layout.SOURCE_SPACE, MNI, "json")
    ),  # registration quality, timings
}
QC_FIGURES = {
    "brain_mask": out_path("figure_brain_mask"),
    "registration": out_path("figure_registration"),
}
REGISTER_OPTIONS = "--config-sections " + sections("register", "mars")


@functools.lru_cache(
    maxsize=None
)  # input functions run several times per job: search the folder once
def parcellation(subject, session):
    """The session's own parcellation under mars.parcellation_dir (cmb.parcellation), and why there is none."""
    root = config["mars"]["parcellation_dir"]
    if not root:
        return None, None
    try:
        found = find_parcellation(root, subject, session, config["mars"]["parcellation_desc"])
    except ParcellationError as err:
        return None, f"{err}; the atlas route is used"
    if found is None:
        return None, (
            f"no parcellation of sub-{subject}{f' ses-{session}' if session else ''} under {root} "
            "(mars.parcellation_dir); the atlas route is used"
        )
    return found, None


def register_inputs(wildcards):
    files = {k: v for k, v in preprocessed(wildcards).items() if k in ("image", "mask")}
    if has_t1w(wildcards):
        files["t1w"] = ingested(wildcards)["t1w"]
    found, _ = parcellation(wildcards.subject, session_label(wildcards))
    if found is not None:
        files["parcellation"] = str(found)
    return files


def register_args(wildcards, input, output):
    upstream = stage_status("preprocess", wildcards) + stage_status("ingest_t1w", wildcards)
    found, refused = parcellation(wildcards.subject, session_label(wildcards))
    args = {
        "t1w": ["--t1w", input.t1w] if "t1w" in input.keys() else [],
        "parcellation": (
            ["--parcellation", input.parcellation]
            if found is not None
            else ["--parcellation-refused", refused] if refused else []
        ),
    }
    return {
        "soft": soft_args(
            "register", "register_to_mni", wildcards, non_status(output), output.status, upstream
        ),
        "prefix": shlex.quote(fill(XFM_PREFIX, wildcards)),
        **{k: shlex.join(v) for k, v in args.items()},
    }


def qc_inputs(wildcards):
    files = {k: v for k, v in preprocessed(wildcards).items() if k in ("image", "mask")}
    files["mars"] = fill(REGISTERED["mars"], wildcards)
    return files


def qc_args(wildcards, output):
    return {
        "brain_mask": soft_args(
            "plot_brain_mask",
            "plot_qc",
            wildcards,
            output.brain_mask,
            output.brain_mask_status,
            stage_status("preprocess", wildcards),
        ),
        "registration": soft_args(
            "plot_registration",
            "plot_qc",
            wildcards,
            output.registration,
            output.registration_status,
            stage_status("register", wildcards),
        ),
    }


rule build_mars_map:
    """MARS regions (lobar, deep, infratentorial per hemisphere; CSF) on the MNI grid."""
    output:
        dseg=MNI_MARS,
        tsv=MNI_MARS_TSV,
    log:
        f"{OUT}/logs/build_mars_map/log.txt",
    benchmark:
        f"{OUT}/benchmarks/build_mars_map/benchmark.tsv"
    priority: 10  # every registration waits for it; at 0 it queued behind all the ingests
    conda:
        "../envs/ants.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 6000 * attempt,
        runtime=lambda wc, attempt: 15 * attempt,
    params:
        options="--config-sections " + sections("mars"),
    shell:
        "python -m cmb.mars_map --out-dseg {output.dseg:q} --out-tsv {output.tsv:q} {params.options} &> {log:q}"


rule register_to_mni:
    """Subject->MNI affine + SyN (via the T1w if any), both directions, quality; native MARS map."""
    input:
        unpack(register_inputs),
        mars=MNI_MARS,
    output:
        **REGISTERED,
        status=status_path("register_to_mni"),
    log:
        log_path("register_to_mni"),
    benchmark:
        benchmark_path("register_to_mni")
    priority: 2
    conda:
        "../envs/ants.yaml"
    threads: SUM_THREADS
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    params:
        args=register_args,
        options=REGISTER_OPTIONS,
    shell:
        # ANTsPy leaves ~185 MB per registration in $TMPDIR: each job gets its own, removed at exit
        ": > {log:q}; "
        'export TMPDIR="$(mktemp -d "${{TMPDIR:-/tmp}}/cmb-register.XXXXXX")"; '
        "trap 'rm -rf \"$TMPDIR\"' EXIT; "
        "python -m cmb.failures run {params.args[soft]} --"
        " cmb.registration --image {input.image:q} --mask {input.mask:q} {params.args[t1w]}"
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
    log:
        log_path("plot_qc"),
    benchmark:
        benchmark_path("plot_qc")
    priority: 3
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 3000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    params:
        soft=qc_args,
    shell:
        ": > {log:q}; python -m cmb.failures run {params.soft[brain_mask]} --"
        " cmb.qc_figures mask --image {input.image:q} --mask {input.mask:q}"
        " --out {output.brain_mask:q} &>> {log:q};"
        " python -m cmb.failures run {params.soft[registration]} --"
        " cmb.qc_figures registration --image {input.image:q} --dseg {input.mars:q}"
        " --out {output.registration:q} &>> {log:q}"
