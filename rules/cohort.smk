"""Cohort-level files: the derivative's dataset_description.json and failures.csv."""


rule write_dataset_description:
    """BIDS-derivatives dataset_description.json (GeneratedBy) and .bidsignore."""
    output:
        description=f"{OUT}/dataset_description.json",
        bidsignore=f"{OUT}/.bidsignore",
    params:
        description=DATASET_DESCRIPTION,
        bidsignore="logs/\nbenchmarks/\nstatus/\nfailures.csv\n",
    log:
        f"{OUT}/logs/write_dataset_description/log.txt",
    benchmark:
        f"{OUT}/benchmarks/write_dataset_description/benchmark.tsv"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 500 * attempt,
        runtime=lambda wc, attempt: 5 * attempt,
    localrule: True
    run:
        from cmb.atomic import write_json, write_text

        write_json(output.description, params.description)
        write_text(output.bidsignore, params.bidsignore)
        write_text(log[0], f"wrote {output.description}\n")


rule collect_failures:
    """failures.csv: one row per failed or skipped stage of any subject."""
    input:
        subject_status_records(),
    output:
        f"{OUT}/failures.csv",
    log:
        f"{OUT}/logs/collect_failures/log.txt",
    benchmark:
        f"{OUT}/benchmarks/collect_failures/benchmark.tsv"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 1000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    localrule: True
    run:
        from cmb.atomic import write_text
        from cmb.failures import write_failures_csv

        table = write_failures_csv(input, output[0])
        write_text(log[0], f"{len(table)} failed or skipped stage(s) in {len(input)} records\n")
