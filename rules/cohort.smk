"""Cohort-level files: the derivative's dataset_description.json and failures.csv."""

from cmb import __version__ as CMB_VERSION

DATASET_DESCRIPTION = {
    "Name": "cmb: cerebral microbleed detection",
    "BIDSVersion": "1.10.0",
    "DatasetType": "derivative",
    "GeneratedBy": [
        {
            "Name": "cmb",
            "Version": CMB_VERSION,
            "Description": f"Snakemake workflow: ingestion, preprocessing, registration to {MNI}, "
            "MARS regions in native space",
        }
    ],
    "SourceDatasets": [{"URL": f"file://{os.path.abspath(config['bids_dir'])}"}],
}
COHORT = {
    "counts": f"{OUT}/cohort/cmb_counts.csv",
    "counts_json": f"{OUT}/cohort/cmb_counts.json",
    "detections": f"{OUT}/cohort/cmb_detections.csv",
    "detections_json": f"{OUT}/cohort/cmb_detections.json",
    "counts_long": f"{OUT}/cohort/cmb_counts_long.csv",
    "counts_long_json": f"{OUT}/cohort/cmb_counts_long.json",
    "ratings": f"{OUT}/cohort/cmb_ratings_template.tsv",
}
COHORT_REPORT = {
    "html": f"{OUT}/cohort/cmb_report.html",
    "counts_figure": f"{OUT}/cohort/figures/cmb_count_distribution.svg",
    "regions_figure": f"{OUT}/cohort/figures/cmb_region_counts.svg",
}
# reviewers' verdict files (docs/review.md), read only
VERDICTS_DIR = config["review"]["verdicts_dir"] or os.path.join(
    os.path.dirname(OUT) or ".", "cmb-verdicts"
)


def verdict_files():
    """Every reviewer's verdict file under VERDICTS_DIR (found when the DAG is built)."""
    from cmb.verdicts import find_verdict_files

    return [str(p) for files in find_verdict_files(VERDICTS_DIR).values() for p in files]


def cohort_subjects():
    """cmb.cohort_tables.SubjectFiles of every subject/session, in a fixed order."""
    from cmb.cohort_tables import SubjectFiles, read_sites

    sites = read_sites(os.path.join(config["bids_dir"], "participants.tsv"))
    out = []
    for key in sorted(RECORDS, key=lambda k: (k[0], k[1] or "")):
        rec, wc = RECORDS[key], record_wildcards(RECORDS[key])
        out.append(
            SubjectFiles(
                participant_id=rec.subject,
                session_id=rec.session,
                detections=fill(LOCALIZED["table"], wc),
                sidecar=fill(LOCALIZED["sidecar"], wc),
                records=subject_stage_records(wc),
                site=sites.get(f"sub-{rec.subject}"),
                phase=preprocessed(wc).get("phase"),
            )
        )
    return out


rule write_dataset_description:
    """BIDS-derivatives dataset_description.json (GeneratedBy) and .bidsignore."""
    output:
        description=f"{OUT}/dataset_description.json",
        bidsignore=f"{OUT}/.bidsignore",
    log:
        f"{OUT}/logs/write_dataset_description/log.txt",
    benchmark:
        f"{OUT}/benchmarks/write_dataset_description/benchmark.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 500 * attempt,
        runtime=lambda wc, attempt: 5 * attempt,
    params:
        description=DATASET_DESCRIPTION,
        bidsignore="logs/\nbenchmarks/\nstatus/\nfailures.csv\ncohort/\n*_report.html\n",
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
    localrule: True
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 1000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
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
        tables=[
            p
            for rec in RECORDS.values()
            for k in ("table", "sidecar")
            for p in [fill(LOCALIZED[k], record_wildcards(rec))]
        ]
        + subject_status_records(),
        verdicts=verdict_files(),  # a new or changed verdict file reruns this rule only
    output:
        **COHORT,
    log:
        f"{OUT}/logs/collect_cohort_tables/log.txt",
    benchmark:
        f"{OUT}/benchmarks/collect_cohort_tables/benchmark.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    params:
        qc=config["localize"]["qc"],
    run:
        from cmb.cohort_tables import write_cohort_tables

        write_cohort_tables(
            cohort_subjects(),
            output.counts,
            output.detections,
            qc=dict(params.qc),
            out_ratings=output.ratings,
            out_counts_long=output.counts_long,
            log=log[0],
            verdicts=list(input.verdicts),
        )


rule report_cohort:
    """Self-contained cohort QC HTML: count distribution, regions, sites, outliers,
    failures, links to every subject page, reviewer ratings."""
    input:
        counts=COHORT["counts"],
        detections=COHORT["detections"],
        failures=f"{OUT}/failures.csv",
        reports=[fill(SUBJECT_REPORT, record_wildcards(rec)) for rec in RECORDS.values()],
    output:
        html=report(
            COHORT_REPORT["html"], caption="../cmb/report/captions/cohort.rst", category="Cohort"
        ),
        counts_figure=report(
            COHORT_REPORT["counts_figure"],
            caption="../cmb/report/captions/counts.rst",
            category="Cohort",
        ),
        regions_figure=report(
            COHORT_REPORT["regions_figure"],
            caption="../cmb/report/captions/regions.rst",
            category="Cohort",
        ),
    log:
        f"{OUT}/logs/report_cohort/log.txt",
    benchmark:
        f"{OUT}/benchmarks/report_cohort/benchmark.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 3000 * attempt,
        runtime=lambda wc, attempt: 15 * attempt,
    shell:
        "python -m cmb.report cohort --counts {input.counts:q} --detections {input.detections:q}"
        " --failures {input.failures:q} --out {output.html:q} --out-counts-figure {output.counts_figure:q}"
        " --out-regions-figure {output.regions_figure:q} &> {log:q}"
