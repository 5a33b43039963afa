"""Cohort-level files: the derivative's dataset_description.json and failures.csv."""


rule write_dataset_description:
    """BIDS-derivatives dataset_description.json (GeneratedBy) and .bidsignore."""
    output:
        description=f"{OUT}/dataset_description.json",
        bidsignore=f"{OUT}/.bidsignore",
    params:
        description=DATASET_DESCRIPTION,
        bidsignore="logs/\nbenchmarks/\nstatus/\nfailures.csv\ncohort/\n*_report.html\n",
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


rule collect_cohort_tables:
    """cohort/cmb_counts.csv (one row per subject/session), cmb_counts_long.csv (one row per
    scan, region and hemisphere) and cmb_detections.csv (every above-threshold detection,
    counted or rejected), with their data dictionaries and a ratings template; once
    review.verdicts_dir holds verdict files, cmb_counts.csv gains the review columns
    (cmb.verdicts.review_columns)."""
    input:
        tables=cohort_table_inputs(),
        verdicts=verdict_files(),  # a new or changed verdict file reruns this rule only
    output:
        **COHORT,
    params:
        qc=LOCALIZE_QC,
    log:
        f"{OUT}/logs/collect_cohort_tables/log.txt",
    benchmark:
        f"{OUT}/benchmarks/collect_cohort_tables/benchmark.tsv"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    localrule: True
    run:
        from cmb.cohort_tables import write_cohort_tables

        write_cohort_tables(cohort_subjects(), output.counts, output.detections, qc=dict(params.qc),
                            out_ratings=output.ratings, out_counts_long=output.counts_long, log=log[0],
                            verdicts=list(input.verdicts))


rule report_cohort:
    """Self-contained cohort QC HTML: count distribution, regions, sites, outliers,
    failures, links to every subject page, reviewer ratings."""
    input:
        counts=COHORT["counts"],
        detections=COHORT["detections"],
        failures=f"{OUT}/failures.csv",
        reports=subject_reports(),
    output:
        html=report(COHORT_REPORT["html"], caption="../cmb/report/captions/cohort.rst", category="Cohort"),
        counts_figure=report(COHORT_REPORT["counts_figure"], caption="../cmb/report/captions/counts.rst",
                             category="Cohort"),
        regions_figure=report(COHORT_REPORT["regions_figure"], caption="../cmb/report/captions/regions.rst",
                              category="Cohort"),
    log:
        f"{OUT}/logs/report_cohort/log.txt",
    benchmark:
        f"{OUT}/benchmarks/report_cohort/benchmark.tsv"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 3000 * attempt,
        runtime=lambda wc, attempt: 15 * attempt,
    conda:
        "../envs/report.yaml"
    shell:
        "python -m cmb.report cohort --counts {input.counts:q} --detections {input.detections:q}"
        " --failures {input.failures:q} --out {output.html:q} --out-counts-figure {output.counts_figure:q}"
        " --out-regions-figure {output.regions_figure:q} &> {log:q}"
