"""Self-contained QC reports: one HTML page per subject/session and one per cohort.

- :mod:`cmb.report.reportlets`: the figures (drawing only);
- :mod:`cmb.report.assemble`: data gathering and Jinja rendering
  (templates in ``cmb/report/templates``, captions for ``snakemake --report`` in
  ``cmb/report/captions``).

Command line (``python -m cmb.report``)::

    python -m cmb.report subject --subject 01 --detections ... --out sub-01_report.html
    python -m cmb.report cohort --counts cmb_counts.csv --detections cmb_detections.csv --out cmb_report.html
"""

from cmb.report.assemble import render_cohort_report, render_subject_report, subject_report_link

__all__ = ["render_subject_report", "render_cohort_report", "subject_report_link", "main"]


def main(argv=None) -> int:
    # here, not at the top: cmb.report.__main__ imports this module (its package); imported at
    # the top, python -m cmb.report would run a second copy of it (runpy's RuntimeWarning)
    from cmb.report.__main__ import main as _main

    return _main(argv)
