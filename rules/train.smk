"""Training and evaluation targets (not part of the default run).

    snakemake --profile profiles/local train_model --config bids_dir=... output_dir=...
    snakemake --profile profiles/local evaluate_detections --config bids_dir=... output_dir=...

train_model preprocesses every subject, then trains (or fine-tunes, training.init_model)
the candidate classifier on the ground truth in training.truth_dir (cmb.detect.training).
evaluate_detections detects in every subject and scores the detections against the
same truth (cmb.evaluation): per-subject and cohort CSV/JSON and the FROC curve.
"""

TRUTH_DIR = config["training"]["truth_dir"] or os.path.join(
    config["bids_dir"], "derivatives", "cmb-truth"
)
MODEL_OUT = config["training"]["model_out"] or f"{OUT}/model"
EVALUATION = {
    name: f"{OUT}/evaluation/{name}"
    for name in (
        "subjects.csv",
        "cohort.csv",
        "cohort.json",
        "froc.csv",
        "froc.png",
        "detections.csv",
    )
}
TRAIN_ARGS = (
    shlex.join(
        ["--truth", TRUTH_DIR]
        + (["--init", config["training"]["init_model"]] if config["training"]["init_model"] else [])
        + ([] if config["detection"]["use_gpu"] else ["--cpu"])
    )
    + " --config-sections "
    + sections("training")
)


rule preprocessed_all:
    """Target: every subject preprocessed (what train_model and bench/bench_detect.py read)."""
    input:
        lambda wc: [
            f for rec in RECORDS.values() for f in preprocessed(record_wildcards(rec)).values()
        ],
    localrule: True


rule train_model:
    """Train the detector on every preprocessed subject with ground truth."""
    input:
        preprocessed=lambda wc: [
            f for rec in RECORDS.values() for f in preprocessed(record_wildcards(rec)).values()
        ],
        init=(
            [os.path.join(config["training"]["init_model"], "model_card.json")]
            if config["training"]["init_model"]
            else []
        ),
    output:
        weights=f"{MODEL_OUT}/model.safetensors",
        card=f"{MODEL_OUT}/model_card.json",
    log:
        f"{OUT}/logs/train_model/log.txt",
    benchmark:
        f"{OUT}/benchmarks/train_model/benchmark.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=lambda wc, attempt: 16000 * attempt,
        runtime=lambda wc, attempt: 600 * attempt,
        gpu=1 if config["detection"]["use_gpu"] else 0,
    params:
        args=TRAIN_ARGS,
    shell:
        "python -m cmb.detect.training --derivatives {OUT:q} --out {MODEL_OUT:q} {params.args}"
        " --threads {threads} --no-progress &> {log:q}"


rule evaluate_detections:
    """Lesion-level evaluation of every subject's detections against the ground truth."""
    input:
        tables=lambda wc: [
            fill(DETECTED["table"], record_wildcards(rec)) for rec in RECORDS.values()
        ],
    output:
        **EVALUATION,
    log:
        f"{OUT}/logs/evaluate_detections/log.txt",
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    params:
        truth=TRUTH_DIR,
    shell:
        "python -m cmb.evaluation --derivatives {OUT:q} --truth {params.truth:q} --out {OUT:q}/evaluation"
        " --missing-as-empty &> {log:q}"
