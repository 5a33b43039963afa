"""The detector's confidence calibration and operating threshold: fitted, chosen, applied.

A model card holds both (:mod:`cmb.detect.model`): ``calibration`` (Platt scaling of the
network's logits, fitted on validation candidates) and ``threshold`` (chosen on the
validation FROC, with the rule in ``threshold_rule``). ``cmb train`` fits them after
training and ``cmb calibrate`` (:mod:`cmb.detect.recalibrate`) refits them on a site's own
annotated scans; both call :func:`operating_point`. The detect stage applies them with
:func:`calibrate` and :func:`operating_threshold`.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.special import expit

from cmb.detect.patches import DEFAULT_PHASE_WRAP_LIMIT, N_SYMMETRIES
from cmb.evaluation import choose_threshold, froc_curve, load_truth, match_cohort, sensitivity_at_fp

__all__ = [
    "DEFAULT_TTA",
    "PFROC_LEVELS",
    "add_operating_point_arguments",
    "calibrate",
    "fit_platt",
    "operating_point",
    "operating_threshold",
    "partial_froc",
    "validation_froc",
]

# false positives per scan at which the partial FROC area averages the sensitivity
PFROC_LEVELS = (0.25, 0.5, 1.0, 2.0)
DEFAULT_TTA = 1


def calibrate(logits: np.ndarray, calibration: dict | None) -> np.ndarray:
    """Platt scaling ``sigmoid(a * logit + b)`` of a model card's ``calibration`` (identity without one).

    >>> calibrate(np.array([0.0, 2.0]), {"a": 0.5, "b": -1.0}).round(3).tolist()
    [0.269, 0.5]
    """
    a, b = (calibration or {}).get("a", 1.0), (calibration or {}).get("b", 0.0)
    return expit(a * np.asarray(logits, float) + b)


def operating_threshold(card: dict, threshold: float | None = None) -> float:
    """The confidence at which a candidate is reported: ``threshold`` when given (the config's
    ``detection.threshold``), else the one the model card was calibrated for.

    >>> operating_threshold({"threshold": 0.42}), operating_threshold({"threshold": 0.42}, 0.5)
    (0.42, 0.5)
    """
    return float(card["threshold"] if threshold is None else threshold)


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Platt scaling ``sigmoid(a * logit + b)`` by maximum likelihood."""
    z = torch.tensor(logits, dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.float64)
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([ab], lr=0.5, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(ab[0] * z + ab[1], y)
        loss.backward()
        return loss

    opt.step(closure)
    a, b = ab.detach().tolist()
    return {"a": a, "b": b}


def validation_froc(samples, scores: list[np.ndarray]) -> pd.DataFrame:
    """FROC of validation scans (:class:`~cmb.detect.training.ScanSamples`, every candidate
    kept) with ``scores`` (one array per scan) as the candidates' confidences."""
    pairs = [
        (
            s.scan.key,
            s.scan.acquisition,
            s.candidates.assign(confidence=sc),
            load_truth(s.scan.truth),
        )
        for s, sc in zip(samples, scores)
    ]
    return froc_curve(match_cohort(pairs))


def partial_froc(froc: pd.DataFrame) -> float:
    """Mean sensitivity at :data:`PFROC_LEVELS` false positives per scan."""
    return float(np.nanmean(sensitivity_at_fp(froc, PFROC_LEVELS)["sensitivity"]))


def operating_point(
    val,
    logits: list[np.ndarray],
    tta: int = DEFAULT_TTA,
    max_fp_avg: float | None = None,
    phase_wrap_limit: float | None = None,
) -> dict:
    """Calibration, operating threshold and validation metrics from validation scans.

    ``logits``: the network's, one array per scan of ``val`` (``ScanSamples``), averaged
    over ``tta`` symmetric views with the phase hidden where it is wrapped beyond
    ``phase_wrap_limit``, as the detect stage will score them
    (:func:`cmb.detect.training.sample_logits`). Platt scaling of those logits, then the
    threshold: the most sensitive one whose validation false positives per scan stay
    within ``max_fp_avg``, else the one that maximizes validation F1. Returns the model
    card's ``calibration``, ``threshold``, ``threshold_rule``, ``tta``,
    ``phase_wrap_limit`` and ``validation`` entries.
    """
    if not val or not any(len(s.labels) for s in val):
        raise ValueError("no validation candidates: cannot calibrate")
    labels = np.concatenate([s.labels.numpy() for s in val])
    platt = fit_platt(np.concatenate(logits), labels)
    froc = validation_froc(val, [calibrate(z, platt) for z in logits])
    threshold = choose_threshold(froc, max_fp_avg=max_fp_avg)
    at = froc[froc["threshold"] == threshold].iloc[0]
    n_truth = sum(s.n_truth for s in val)
    found = sum(s.n_truth_found for s in val)
    return {
        "calibration": {"method": "platt", **platt},
        "threshold": float(threshold),
        "threshold_rule": (
            "best validation F1"
            if max_fp_avg is None
            else f"highest validation sensitivity at FPavg <= {max_fp_avg:g}"
        ),
        "tta": int(tta),
        "phase_wrap_limit": phase_wrap_limit,
        "validation": {
            "n_scans": len(val),
            "n_cmb": int(n_truth),
            "screen_sensitivity": found / n_truth if n_truth else None,
            "sensitivity": float(at["sensitivity"]),
            "fp_avg": float(at["fp_avg"]),
            "precision": float(at["precision"]),
            "f1": float(at["f1"]),
            "partial_froc": partial_froc(froc),
            "sensitivity_at_1fp": float(sensitivity_at_fp(froc, (1.0,))["sensitivity"].iloc[0]),
        },
    }


def add_operating_point_arguments(p: argparse.ArgumentParser) -> None:
    """``--tta``, ``--phase-wrap-limit`` and ``--max-fp-avg``, shared by ``cmb train`` and ``cmb calibrate``."""
    p.add_argument(
        "--tta",
        type=int,
        default=DEFAULT_TTA,
        choices=range(1, N_SYMMETRIES + 1),
        metavar="N",
        help="calibrate for test-time augmentation over N symmetric views of each patch "
        f"(1-{N_SYMMETRIES}); the detect stage then averages over as many",
    )
    p.add_argument(
        "--phase-wrap-limit",
        type=_wrap_limit,
        default=DEFAULT_PHASE_WRAP_LIMIT,
        metavar="W",
        help="score candidates without their phase where their 24 mm context has more than W phase "
        "wraps per brain sample (air-cavity fringes; for models trained with --phase-dropout); "
        f"'none' keeps every phase (default {DEFAULT_PHASE_WRAP_LIMIT})",
    )
    p.add_argument(
        "--max-fp-avg",
        type=float,
        metavar="FP",
        help="operating threshold: the most sensitive one with at most FP false positives per "
        "validation scan (default: the best validation F1)",
    )


def _wrap_limit(text: str) -> float | None:
    """An argparse type: a phase wrap density of 0 or more, or 'none'."""
    if text.lower() == "none":
        return None
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, or 'none', got {text}")
    return value
