"""QC reports: one self-contained HTML page per subject/session (cmb.report).

report_subject: counts by region and the MARS pattern, the detections table, a
zoomed axial/coronal/sagittal triplet per detection (magnitude, and phase when there
is one), rejected and below-threshold candidates apart, the registration check
(atlas edges, and a flicker of the atlas over the subject), the brain-mask overlay,
provenance and every stage's status. Everything is inline (no external file or
URL); the page renders even for a subject whose stages failed (it then shows why).
The cohort page (rule report_cohort) is in rules/cohort.smk.
"""


rule report_subject:
    """Self-contained QC HTML of one subject/session."""
    input:
        unpack(report_inputs),
    output:
        html=report(SUBJECT_REPORT, caption="../cmb/report/captions/subject.rst", category="Subject reports",
                    labels=lambda wc: {"subject": wc.subject, "session": session_label(wc) or "-"}),
        status=status_path("report_subject"),
    params:
        args=report_args,
    log:
        log_path("report_subject"),
    benchmark:
        benchmark_path("report_subject")
    threads: 1
    priority: 5
    resources:
        mem_mb=lambda wc, attempt: 3000 * attempt,
        runtime=lambda wc, attempt: 10 * attempt,
    conda:
        "../envs/report.yaml"
    shell:
        ": > {log:q}; python -c \"$CMB_SOFT_STAGE\" {params.args[soft]} --"
        " python -m cmb.report subject {params.args[args]} --detections {input.detections:q}"
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
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 500 * attempt,
        runtime=lambda wc, attempt: 5 * attempt,
    localrule: True
    conda:
        "../envs/report.yaml"
    shell:
        "python -m cmb.report viewer --out {OUT:q}/viewer &> {log:q}"
