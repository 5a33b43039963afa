"""CMB detection on each subject's preprocessed magnitude (and phase, when present).

detect_cmb (cmb.detect): the dark-blob screen proposes candidates over the brain
mask; the CNN scores a multi-scale patch around each; every candidate is kept with
its calibrated confidence and ``above_threshold``. Outputs, on the preprocessed grid::

    sub-X_desc-candidates_cmb.tsv       one row per candidate (cmb.detect.CANDIDATE_COLUMNS)
    sub-X_desc-candidates_cmb.json      model card SHA-256, threshold, device, timings
    sub-X_desc-candidates_dseg.nii.gz   each candidate's voxels labelled with its candidate_id
    sub-X_desc-cmb_probseg.nii.gz       confidence painted over each candidate's voxels

The rule asks SLURM for a GPU (``resources: gpu=1``) unless detection.use_gpu is
false; without a visible GPU it runs on the CPU with the same results.
"""

MODEL_DIR = config["detection"]["model_dir"] or os.path.join(
    workflow.basedir, "cmb", "detect", "weights", "default"
)
MODEL_FILES = [
    os.path.join(MODEL_DIR, "model.safetensors"),
    os.path.join(MODEL_DIR, "model_card.json"),
]
DETECTED = {
    "table": out_path("candidates_table"),
    "sidecar": out_path("candidates_sidecar"),
    "dseg": out_path("candidates_dseg"),
    "prob": out_path("candidates_prob"),
}
DETECT_OPTIONS = f"--config-sections {sections('detection')} --model {shlex.quote(MODEL_DIR)}"


def detect_args(wildcards, input, output):
    return {
        "soft": soft_args(
            "detect",
            "detect_cmb",
            wildcards,
            non_status(output),
            output.status,
            stage_status("preprocess", wildcards),
        ),
        "phase": shlex.join(["--phase", input.phase]) if "phase" in input.keys() else "",
    }


rule detect_cmb:
    """Candidates and their calibrated confidences (CUDA when visible, else CPU)."""
    input:
        unpack(lambda wc: {k: v for k, v in preprocessed(wc).items()}),
        model=MODEL_FILES,
    output:
        **DETECTED,
        status=status_path("detect_cmb"),
    log:
        log_path("detect_cmb"),
    benchmark:
        benchmark_path("detect_cmb")
    priority: 3
    conda:
        "../envs/torch.yaml"
    threads: SUM_THREADS
    resources:
        mem_mb=lambda wc, attempt: 6000 * attempt,
        runtime=lambda wc, attempt: 15 * attempt,
        gpu=1 if config["detection"]["use_gpu"] else 0,
    params:
        args=detect_args,
        options=DETECT_OPTIONS,
    shell:
        ": > {log:q}; python -m cmb.failures run {params.args[soft]} --"
        " cmb.detect --image {input.image:q} --mask {input.mask:q} {params.args[phase]}"
        " --out-table {output.table:q} --out-sidecar {output.sidecar:q} --out-dseg {output.dseg:q}"
        " --out-prob {output.prob:q} {params.options} --threads {threads} &>> {log:q}"
