"""QC reports: one self-contained HTML page per subject/session (cmb.report).

report_subject: counts by region and the MARS pattern, the detections table, a
zoomed axial/coronal/sagittal triplet per detection (magnitude, and phase when there
is one), rejected and below-threshold candidates apart, the registration check
(atlas edges, and a flicker of the atlas over the subject), the brain-mask overlay,
provenance and every stage's status. Everything is inline (no external file or
URL); the page renders even for a subject whose stages failed (it then shows why).
The cohort page (rule report_cohort) is in rules/cohort.smk.
"""

SUBJECT_REPORT = out_path("report")
# NiiVue once per output folder (the reviewer loop, docs/review.md)
VIEWER = {name: f"{OUT}/viewer/{name}" for name in ("niivue.umd.js", "LICENSE", "README.md")}


def report_inputs(wildcards):
    files = dict(preprocessed(wildcards))
    files.update(
        {
            "detections": fill(LOCALIZED["table"], wildcards),
            "sidecar": fill(LOCALIZED["sidecar"], wildcards),
            "candidates_dseg": fill(DETECTED["dseg"], wildcards),
            "mars": fill(REGISTERED["mars"], wildcards),
            "records": subject_stage_records(wildcards),
        }
    )
    files.update({f"figure_{k}": fill(v, wildcards) for k, v in QC_FIGURES.items()})
    files["viewer_js"] = VIEWER["niivue.umd.js"]
    if has_t1w(wildcards):  # a layer of the viewer
        files["t1w"] = ingested(wildcards)["t1w"]
    return files


def report_args(wildcards, input, output):
    args = session_args(wildcards) + ["--records", *input.records]
    args += ["--phase", input.phase] if "phase" in input.keys() else []
    args += ["--t1w", input.t1w] if "t1w" in input.keys() else []
    args += ["--embed-budget-bytes", str(config["review"]["embed_budget_bytes"])]
    return {
        "soft": soft_args("report", "report_subject", wildcards, output.html, output.status),
        "args": shlex.join(args),
    }


rule report_subject:
    """Self-contained QC HTML of one subject/session."""
    input:
        unpack(report_inputs),
    output:
        html=report(
            SUBJECT_REPORT,
            caption="../cmb/report/captions/subject.rst",
            category="Subject reports",
            labels=lambda wc: {"subject": wc.subject, "session": session_label(wc) or "-"},
        ),
        status=status_path("report_subject"),
    log:
        log_path("report_subject"),
    benchmark:
        benchmark_path("report_subject")
    priority: 5
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 3000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    params:
        args=report_args,
    shell:
        ": > {log:q}; python -m cmb.failures run {params.args[soft]} --"
        " cmb.report subject {params.args[args]} --detections {input.detections:q}"
        " --sidecar {input.sidecar:q} --image {input.image:q} --mask {input.mask:q} --mars {input.mars:q}"
        " --candidates-dseg {input.candidates_dseg:q} --figure-brain-mask {input.figure_brain_mask:q}"
        " --figure-registration {input.figure_registration:q} --viewer-js {input.viewer_js:q}"
        " --out {output.html:q} &>> {log:q}"


rule install_viewer:
    """The vendored NiiVue volume viewer (script, licence, README), once per output folder:
    every subject page's Review section loads it by a relative path, offline."""
    output:
        **VIEWER,
    log:
        f"{OUT}/logs/install_viewer/log.txt",
    benchmark:
        f"{OUT}/benchmarks/install_viewer/benchmark.tsv"
    localrule: True
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 500 * attempt,
        runtime=lambda wc, attempt: 5 * attempt,
    shell:
        "python -m cmb.report viewer --out {OUT:q}/viewer &> {log:q}"
