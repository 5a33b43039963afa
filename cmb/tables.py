"""The columns of the tables cmb writes, and their BIDS-style data dictionary.

One source: ``cmb/data_dictionary.json`` describes every column of the per-subject
detections TSV (``detections``, also the cohort ``cmb_detections.csv``), of
``cmb_counts.csv`` (``counts``) and of its long form (``counts_long``); the column
lists below are read from it, in its order.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

__all__ = ["data_dictionary", "DETECTION_COLUMNS", "COUNT_COLUMNS", "REJECT_REASONS"]


@functools.lru_cache(maxsize=1)
def _dictionaries() -> dict:
    text = resources.files("cmb").joinpath("data_dictionary.json").read_text(encoding="utf-8")
    return json.loads(text)


def data_dictionary(table: str) -> dict:
    """BIDS-style column descriptions of ``"detections"``, ``"counts"`` or ``"counts_long"``.

    >>> data_dictionary("counts")["mars_pattern"]["Levels"]["strictly_lobar"]
    'all localized CMBs lobar'
    """
    try:
        return dict(_dictionaries()[table])
    except KeyError:
        raise ValueError(
            f"no data dictionary for table {table!r} (detections, counts, counts_long)"
        ) from None


#: Columns of the per-subject detections TSV and of the cohort ``cmb_detections.csv``, in order.
DETECTION_COLUMNS = list(_dictionaries()["detections"])
#: Columns of ``cmb_counts.csv``, in order.
COUNT_COLUMNS = list(_dictionaries()["counts"])
#: Values of ``rejected_reason`` (``n/a`` when not rejected): ``vessel`` comes from the
#: detect stage's vessel rule (:mod:`cmb.detect.vessel_evidence`), the others from the
#: anatomical filter (:mod:`cmb.localize`).
REJECT_REASONS = ("vessel", "outside_brain", "csf")
