"""Training and evaluation targets (not part of the default run).

    snakemake --profile profiles/local train_model --config bids_dir=... output_dir=...
    snakemake --profile profiles/local evaluate_detections --config bids_dir=... output_dir=...

train_model preprocesses every subject, then trains (or fine-tunes, training.init_model)
the candidate classifier on the ground truth in training.truth_dir (cmb.detect.training).
evaluate_detections detects in every subject and scores the detections against the
same truth (cmb.evaluation): per-subject and cohort CSV/JSON and the FROC curve.
"""

rule preprocessed_all:
    """Target: every subject preprocessed (what train_model and bench/bench_detect.py read)."""
    input:
        lambda wc: [f for rec in RECORDS.values() for f in preprocessed(record_wildcards(rec)).values()],
    localrule: True


rule train_model:
    """Train the detector on every preprocessed subject with ground truth."""
    input:
        preprocessed=lambda wc: [f for rec in RECORDS.values() for f in preprocessed(record_wildcards(rec)).values()],
        init=[os.path.join(config["training"]["init_model"], "model_card.json")] if config["training"]["init_model"] else [],
    output:
        weights=f"{MODEL_OUT}/model.safetensors",
        card=f"{MODEL_OUT}/model_card.json",
    params:
        args=TRAIN_ARGS,
    log:
        f"{OUT}/logs/train_model/log.txt",
    benchmark:
        f"{OUT}/benchmarks/train_model/benchmark.tsv"
    threads: 2
    resources:
        mem_mb=lambda wc, attempt: 16000 * attempt,
        runtime=lambda wc, attempt: 600 * attempt,
        gpu=1 if config["detection"]["use_gpu"] else 0,
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m cmb.detect.training --derivatives {OUT:q} --out {MODEL_OUT:q} {params.args}"
        " --threads {threads} --no-progress &> {log:q}"


rule evaluate_detections:
    """Lesion-level evaluation of every subject's detections against the ground truth."""
    input:
        tables=lambda wc: [fill(DETECTED["table"], record_wildcards(rec)) for rec in RECORDS.values()],
    output:
        **EVALUATION,
    params:
        truth=TRUTH_DIR,
        threshold=operating_threshold,
    log:
        f"{OUT}/logs/evaluate_detections/log.txt",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 30 * attempt,
    conda:
        "../envs/report.yaml"
    shell:
        "python -m cmb.evaluation --derivatives {OUT:q} --truth {params.truth:q} --out {OUT:q}/evaluation"
        " --threshold {params.threshold} --missing-as-empty &> {log:q}"
