"""Cohort-level files: the derivative's dataset_description.json and failures.csv."""


rule write_dataset_description:
    """BIDS-derivatives dataset_description.json (GeneratedBy) and .bidsignore."""
    output:
        description=f"{OUT}/dataset_description.json",
        bidsignore=f"{OUT}/.bidsignore",
    params:
        version=CMB_VERSION,
        source=os.path.abspath(config["bids_dir"]),
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

        write_json(
            output.description,
            {
                "Name": "cmb: cerebral microbleed detection",
                "BIDSVersion": "1.10.0",
                "DatasetType": "derivative",
                "GeneratedBy": [
                    {
                        "Name": "cmb",
                        "Version": params.version,
                        "Description": "Snakemake workflow: ingestion, preprocessing, registration to "
                        f"{MNI}, MARS regions in native space",
                    }
                ],
                "SourceDatasets": [{"URL": f"file://{params.source}"}],
            },
        )
        write_text(output.bidsignore, "logs/\nbenchmarks/\nstatus/\nfailures.csv\n")
        with open(log[0], "w") as f:
            print(f"wrote {output.description} (cmb {params.version})", file=f)


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
        from cmb.failures import write_failures_csv

        table = write_failures_csv(input, output[0])
        with open(log[0], "w") as f:
            print(f"{len(table)} failed or skipped stage(s) in {len(input)} records", file=f)
            print(table.to_string(index=False), file=f)
