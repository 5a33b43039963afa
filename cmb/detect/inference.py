"""Detection of one scan: screen, delineate, score each candidate, calibrate.

:func:`find_candidates` is shared with training, so that the network is trained on
exactly the candidates it scores at inference. Both the screen and
:func:`score_candidates` run on CUDA when the model is there (the network in mixed
precision) and on the CPU otherwise (float32). On CUDA, a scan whose screen or patch
volumes do not fit in free GPU memory is screened or sampled on the CPU instead, and
the network's batch is halved until it fits: a large volume never runs the GPU out
of memory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from cmb.candidates import (
    dark_blob_response,
    delineate_candidates,
    find_peaks,
    inner_mask,
    screen_bytes,
)
from cmb.config import default
from cmb.detect import CANDIDATE_COLUMNS
from cmb.detect.calibration import calibrate, operating_threshold
from cmb.detect.model import LoadedModel
from cmb.detect.patches import (
    SCALES,
    PatchSampler,
    has_phase,
    hide_phase,
    phase_wrap_density,
    symmetric_views,
)
from cmb.detect.vessel_evidence import (
    DEFAULT_VESSEL_RULE,
    evidence_reliable,
    measure_vessel_evidence,
    vessel_rule,
)

__all__ = [
    "DEFAULT_SCREEN",
    "Candidates",
    "find_candidates",
    "hand_features",
    "score_candidates",
    "view_averaged_logits",
    "wrapped_phase",
    "calibrate",
    "Detection",
    "detect",
]

_log = logging.getLogger(__name__)

#: Screen settings; a model card's "screen" entry overrides them.
DEFAULT_SCREEN = {
    "threshold": 0.1,
    "min_distance_mm": 2.5,
    "radii_mm": [1.0, 1.75, 3.0],
    "max_candidates": 3000,
    "level": 0.5,
    "min_edge_mm": 1.5,
    "blob_extent_radii": 2.5,
}


@dataclass
class Candidates:
    """Candidates of one scan on its (preprocessed) grid."""

    table: (
        pd.DataFrame
    )  # i, j, k, score, radius_mm, volume_mm3, diameter_mm, sphericity, phase_mean
    labels: np.ndarray  # candidate n (row n - 1) labelled n
    seconds: dict = field(default_factory=dict)


def find_candidates(
    magnitude: np.ndarray,
    mask: np.ndarray,
    zooms,
    phase: np.ndarray | None = None,
    screen: dict | None = None,
    device: torch.device | str = "cpu",
) -> Candidates:
    """Dark-blob screen over the brain mask, then each candidate's blob (:mod:`cmb.candidates`).

    The screen's filtering runs on ``device`` when it fits in free memory, else on the CPU.
    """
    s = {**DEFAULT_SCREEN, **(screen or {})}
    t0 = time.perf_counter()
    peaks, response = _where_it_fits(
        lambda d: _screen(magnitude, mask, zooms, s, d),
        torch.device(device),
        screen_bytes(magnitude.shape),
        "screen",
    )
    t1 = time.perf_counter()
    labels, table = delineate_candidates(
        response, peaks, zooms, phase, s["level"], extent_radii=s["blob_extent_radii"]
    )
    t2 = time.perf_counter()
    return Candidates(table, labels, {"screen": t1 - t0, "delineate": t2 - t1})


def _screen(
    magnitude, mask, zooms, s: dict, device: torch.device
) -> tuple[pd.DataFrame, np.ndarray]:
    response, radius = dark_blob_response(magnitude, mask, zooms, s["radii_mm"], device=device)
    # The outer shell of the mask is dark partial volume with skull and dura: no peaks there.
    inner = inner_mask(mask, zooms, s["min_edge_mm"], device=device)
    peaks = find_peaks(
        np.where(inner, response, 0),
        radius,
        zooms,
        s["threshold"],
        s["min_distance_mm"],
        s["max_candidates"],
        device=device,
    )
    return peaks, response


def _where_it_fits(work, device: torch.device, n_bytes: int, what: str):
    """``work(device)``, or ``work(cpu)`` when ``n_bytes`` do not fit in the GPU's free memory or it runs out."""
    device = _fitting_device(device, n_bytes, what)
    try:
        return work(device)
    except torch.OutOfMemoryError:
        _log.warning("GPU memory short: the %s runs on the CPU", what)
        torch.cuda.empty_cache()
        return work(torch.device("cpu"))


def _fitting_device(
    device: torch.device, n_bytes: int, what: str, fraction: float = 0.5
) -> torch.device:
    """``device``, or the CPU when ``n_bytes`` exceed ``fraction`` of the GPU's free memory."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    if n_bytes <= fraction * free:
        return device
    _log.warning(
        "GPU memory short for the %s (%.1f GB needed, %.1f GB free): using the CPU",
        what,
        n_bytes / 1e9,
        free / 1e9,
    )
    return torch.device("cpu")


def hand_features(table: pd.DataFrame, has_phase: bool) -> np.ndarray:
    """``(N, 5)`` float32 :data:`~cmb.detect.patches.FEATURES` of candidates."""
    phase = table["phase_mean"].to_numpy(float) if has_phase else np.zeros(len(table))
    return np.stack(
        [
            table["score"].to_numpy(float),
            np.log(np.maximum(table["diameter_mm"].to_numpy(float), 0.5)),
            table["sphericity"].to_numpy(float),
            np.nan_to_num(phase),
            np.full(len(table), float(has_phase)),
        ],
        1,
    ).astype(np.float32)


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def score_candidates(
    net: torch.nn.Module,
    magnitude,
    mask,
    phase,
    zooms,
    table: pd.DataFrame,
    device: torch.device,
    batch_size: int = default("detection", "batch_size"),
    scales=SCALES,
    tta: int = 1,
    phase_wrap_limit: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Network logits of every candidate (float64, one per row of ``table``), averaged over
    ``tta`` symmetric views of each patch (:func:`~cmb.detect.patches.symmetric_views`),
    and which candidates were scored without their phase because it is wrapped beyond
    ``phase_wrap_limit`` (:func:`wrapped_phase`)."""
    n = len(table)
    logits, hidden = np.zeros(n, np.float64), np.zeros(n, bool)
    if n == 0:
        return logits, hidden
    centres = table[["i", "j", "k"]].to_numpy(float)
    feats = hand_features(table, phase is not None)
    cuda = device.type == "cuda"
    size = batch_size
    sampler = _where_it_fits(
        lambda d: PatchSampler(magnitude, mask, phase, zooms, scales, d),
        device,
        PatchSampler.bytes_needed(magnitude.shape, phase is not None),
        "patch sampling",
    )
    if cuda:  # stay well inside free memory: about 6 MB of activations per 16^3 patch in fp16
        free, _ = torch.cuda.mem_get_info(device)
        size = max(1, min(size, int(0.5 * free / 6e6)))
    start = 0
    with torch.inference_mode():
        while start < n:
            sl = slice(start, min(start + size, n))
            f = torch.from_numpy(feats[sl])
            try:
                x, f = sampler(centres[sl]).to(device), f.to(device)
                hide = wrapped_phase(x, phase_wrap_limit)
                with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                    out = view_averaged_logits(net, x, f, tta, hide)
            except torch.OutOfMemoryError:
                if size == 1:
                    raise
                size = max(1, size // 2)
                torch.cuda.empty_cache()
                _log.warning("GPU memory short: batch size lowered to %d", size)
                continue
            logits[sl] = out.float().cpu().numpy()
            hidden[sl] = hide.cpu().numpy()
            start = sl.stop
    return logits, hidden


def wrapped_phase(patches: torch.Tensor, phase_wrap_limit: float | None) -> torch.Tensor:
    """``(N,)`` bool: the patches with a phase whose coarse context holds more than
    ``phase_wrap_limit`` wraps per brain sample (:func:`~cmb.detect.patches.phase_wrap_density`:
    fringes of an air cavity's field). ``None``: none of them."""
    if phase_wrap_limit is None:
        return torch.zeros(len(patches), dtype=torch.bool, device=patches.device)
    return has_phase(patches) & (phase_wrap_density(patches) > phase_wrap_limit)


def view_averaged_logits(
    net: torch.nn.Module,
    patches: torch.Tensor,
    features: torch.Tensor,
    n_views: int,
    hide_phase_of: torch.Tensor | None = None,
) -> torch.Tensor:
    """The network's logits averaged over ``n_views`` symmetric views of each patch (float32).

    The rows ``hide_phase_of`` (bool, from :func:`wrapped_phase`) are scored with their
    phase hidden, as training's phase dropout hides it: the model then judges those
    candidates on the magnitude alone.
    """

    def mean_over_views(x, f):
        return torch.stack([net(v, f).float() for v in symmetric_views(x, n_views)]).mean(0)

    logits = mean_over_views(patches, features)
    if hide_phase_of is not None and hide_phase_of.any():
        logits[hide_phase_of] = mean_over_views(
            *hide_phase(patches[hide_phase_of], features[hide_phase_of])
        )
    return logits


@dataclass
class Detection:
    """Result of :func:`detect`: the candidate table (:data:`CANDIDATE_COLUMNS`) and images."""

    table: pd.DataFrame
    labels: np.ndarray  # int32, candidate_id per voxel
    probability: np.ndarray  # float32, confidence per voxel
    threshold: float
    seconds: dict
    n_phase_hidden: int = (
        0  # candidates scored without their phase (wrapped: :func:`wrapped_phase`)
    )
    vessel: dict = field(default_factory=dict)  # the vessel rule's settings, reliability and counts


def detect(
    image: nib.Nifti1Image,
    mask: np.ndarray,
    phase: np.ndarray | None,
    model: LoadedModel,
    threshold: float | None = None,
    batch_size: int = default("detection", "batch_size"),
    vessel_rule_enabled: bool = True,
) -> Detection:
    """Detect CMBs in one preprocessed magnitude (``image``) with its brain ``mask`` and optional phase.

    Returns every candidate, strongest screen response first, with its calibrated
    ``confidence`` and ``above_threshold`` (``threshold``, else the model card's), its
    vessel evidence and whether the vessel rule rejects it (``vessel_rule_enabled``;
    the settings are the model card's ``vessel_rule`` over
    :data:`~cmb.detect.vessel_evidence.DEFAULT_VESSEL_RULE`).
    """
    card = model.card
    magnitude = np.asarray(image.dataobj, dtype=np.float32)
    mask = np.asarray(mask, bool)
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    device = next(model.net.parameters()).device
    cands = find_candidates(magnitude, mask, zooms, phase, card.get("screen"), device)
    t0 = time.perf_counter()
    scales = tuple(tuple(s) for s in card.get("scales", SCALES))
    logits, phase_hidden = score_candidates(
        model.net,
        magnitude,
        mask,
        phase,
        zooms,
        cands.table,
        device,
        batch_size,
        scales,
        int(card.get("tta", 1)),
        card.get("phase_wrap_limit"),
    )
    t1 = time.perf_counter()
    conf = calibrate(logits, card.get("calibration"))
    thr = operating_threshold(card, threshold)

    tab = cands.table
    n = len(tab)
    ijk = tab[["i", "j", "k"]].to_numpy(int).reshape(-1, 3)
    xyz = nib.affines.apply_affine(image.affine, ijk) if n else np.zeros((0, 3))
    phase_mean = tab["phase_mean"].to_numpy(float)
    sign = np.where(
        np.isnan(phase_mean), "n/a", np.where(phase_mean >= 0, "paramagnetic", "diamagnetic")
    )
    out = pd.DataFrame(
        {
            "candidate_id": np.arange(1, n + 1),
            "i": ijk[:, 0],
            "j": ijk[:, 1],
            "k": ijk[:, 2],
            "x_mm": xyz[:, 0],
            "y_mm": xyz[:, 1],
            "z_mm": xyz[:, 2],
            "volume_mm3": tab["volume_mm3"].to_numpy(float),
            "diameter_mm": tab["diameter_mm"].to_numpy(float),
            "screen_score": tab["score"].to_numpy(float),
            "sphericity": tab["sphericity"].to_numpy(float),
            "phase_mean": phase_mean,
            "phase_sign": sign,
            "phase_used": (phase is not None) & ~phase_hidden,
            "confidence": conf,
            "above_threshold": conf >= thr,
        }
    )
    rule = {**DEFAULT_VESSEL_RULE, **card.get("vessel_rule", {})}
    rule["enabled"] = bool(rule["enabled"] and vessel_rule_enabled)
    measured = conf >= float(rule["min_confidence_fraction"]) * thr
    evidence = measure_vessel_evidence(
        magnitude, mask, zooms, image.affine, tab, cands.labels, measured, rule
    )
    vein = vessel_rule(evidence, zooms, rule) & measured
    for col in evidence.columns:
        out[col] = evidence[col].to_numpy()
    out["rejected"] = vein
    out["rejected_reason"] = np.where(vein, "vessel", "n/a")
    out = out[CANDIDATE_COLUMNS]
    t2 = time.perf_counter()
    vessel = {
        "settings": rule,
        "reliable": evidence_reliable(zooms, rule),
        "n_measured": int(measured.sum()),
        "n_rejected": int(vein.sum()),
        "n_rejected_above_threshold": int((vein & (conf >= thr)).sum()),
    }
    lut = np.concatenate([[0.0], conf]).astype(np.float32)
    prob = lut[cands.labels]
    return Detection(
        out,
        cands.labels,
        prob,
        thr,
        {**cands.seconds, "network": t1 - t0, "vessel": t2 - t1},
        int(phase_hidden.sum()),
        vessel,
    )
