"""Training the candidate classifier: ``cmb train``.

Training reads the workflow's own preprocessed outputs, so that the network sees
exactly what the detect stage gives it, and ground truth in a derivatives folder:

- ``*_label-CMB_dseg.nii.gz`` label maps (one value per CMB, as in VALDO and the
  synthetic generator's ``cmb-truth``), optionally with a sibling ``.tsv``;
- or ``*_label-CMB_dseg.tsv`` point tables (``x_mm, y_mm, z_mm`` scanner RAS and an
  optional ``radius_mm``), for annotations made as points;
- or reviewers' verdict files (``*_rater-<name>_label-CMB_dseg.tsv``, :mod:`cmb.verdicts`,
  exported from the subject pages): accepted and added CMBs are positives, rejected
  candidates negatives, and candidates without a verdict are left out (not negatives).

Each scan's ground truth is found by the ``sub``/``ses``/``run`` entities of the
raw input that the ingest stage chose (its JSON report names it).

Method
------
1. Every scan is screened exactly as at inference (:func:`cmb.detect.inference.find_candidates`).
   A candidate is positive when it would match a ground-truth CMB under the
   project's matching rule (:mod:`cmb.evaluation`).
2. Training scans keep every positive, the ``n_hard`` darkest negatives (mimics:
   veins, calcifications, deep nuclei, noise) and ``n_random`` random ones.
   Validation scans (split by subject) keep every candidate, so that the
   validation FROC is the real one.
3. Each epoch draws positives and negatives 1:``neg_ratio``; negatives are drawn
   in proportion to their current predicted probability (hard-negative mining),
   mixed with uniform draws. Augmentation: flips of every axis and in-plane
   transposition (the dipole pattern stays along B0), magnitude gain and gamma,
   noise, a linear bias ramp, slice-thickness blur, and phase dropout (one model
   for magnitude-only and magnitude+phase inputs).
4. Early stopping on the validation partial FROC area (mean sensitivity at 0.25,
   0.5, 1 and 2 FP per scan). With ``ema``, validation and the saved weights use
   an exponential moving average of the weights, which moves less from epoch to
   epoch than the weights themselves. Platt scaling on validation logits calibrates the
   confidence; the operating threshold maximizes validation F1.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cmb.annotations import Scan, paired_scans
from cmb.atomic import write_text
from cmb.config import add_config_sections, default
from cmb.detect.__main__ import DEFAULT_MODEL
from cmb.detect.calibration import (
    DEFAULT_TTA,
    add_operating_point_arguments,
    operating_point,
    partial_froc,
    validation_froc,
)
from cmb.detect.inference import (
    DEFAULT_SCREEN,
    find_candidates,
    hand_features,
    view_averaged_logits,
    wrapped_phase,
)
from cmb.detect.model import CandidateNet, load_model, save_model, select_device
from cmb.detect.patches import (
    DEFAULT_PHASE_WRAP_LIMIT,
    FEATURES,
    PATCH_CHANNELS,
    SCALES,
    PatchSampler,
    has_phase,
    hide_phase,
)
from cmb.evaluation import (
    MARGIN_MM,
    MIN_POINT_RADIUS_MM,
    detection_hits,
    load_truth,
    truth_from_points,
)

__all__ = ["ScanSamples", "sample_scan", "scan_data_description", "TrainConfig", "train_model"]

_log = logging.getLogger(__name__)


@dataclass
class ScanSamples:
    """Patches of one scan's candidates with their labels."""

    scan: Scan
    patches: torch.Tensor  # (N, 6, S, S, S) float16
    features: torch.Tensor  # (N, 5) float32
    labels: torch.Tensor  # (N,) float32, 1 = matches a CMB
    candidates: pd.DataFrame  # x_mm, y_mm, z_mm of the kept rows (for the validation FROC)
    n_truth: int
    n_truth_found: int  # CMBs hit by at least one screen candidate (stage-1 sensitivity)


def _read(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


def sample_scan(
    scan: Scan,
    screen: dict | None = None,
    n_hard: int = 300,
    n_random: int = 200,
    keep_all: bool = False,
    seed: int = 0,
    scales=SCALES,
    device: torch.device | str = "cpu",
) -> ScanSamples:
    """Screen one scan (on ``device``), label its candidates against the truth, and cut their patches."""
    img = nib.load(scan.image)
    mag = np.asarray(img.dataobj, dtype=np.float32)
    mask = _read(scan.mask) > 0
    phase = _read(scan.phase) if scan.phase else None
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    cands = find_candidates(mag, mask, zooms, phase, screen, device)
    tab = cands.table
    ijk = tab[["i", "j", "k"]].to_numpy(float)
    xyz = nib.affines.apply_affine(img.affine, ijk) if len(tab) else np.zeros((0, 3))
    truth = load_truth(scan.truth)
    if truth.n and len(tab):
        hits, _ = detection_hits(xyz, truth, MARGIN_MM, MIN_POINT_RADIUS_MM)
    else:
        hits = np.zeros((len(tab), truth.n), bool)
    positive = hits.any(1)
    reviewed = np.ones(len(tab), bool)
    if (
        truth.non_cmb is not None
    ):  # reviewers' verdicts: candidates nobody judged are unknown, not negatives
        rejected = truth_from_points(truth.non_cmb)
        reviewed = positive.copy()
        if rejected.n and len(tab):
            reviewed |= detection_hits(xyz, rejected, MARGIN_MM, MIN_POINT_RADIUS_MM)[0].any(1)
    if keep_all:
        rows = np.flatnonzero(reviewed)
    else:
        rng = np.random.default_rng(seed)
        neg = np.flatnonzero(~positive & reviewed)  # tab is sorted by screen score, strongest first
        hard = neg[:n_hard]
        rest = neg[n_hard:]
        rand = rng.choice(rest, size=min(n_random, rest.size), replace=False) if rest.size else rest
        rows = np.sort(np.concatenate([np.flatnonzero(positive), hard, rand]))
    sub = tab.iloc[rows].reset_index(drop=True)
    sampler = PatchSampler(mag, mask, phase, zooms, scales)
    chunks = [sampler(ijk[rows[s : s + 512]]).half() for s in range(0, len(rows), 512)]
    patches = (
        torch.cat(chunks)
        if chunks
        else torch.zeros((0, len(PATCH_CHANNELS), *(scales[0][0],) * 3), dtype=torch.float16)
    )
    feats = torch.from_numpy(hand_features(sub, phase is not None))
    cand_xyz = pd.DataFrame(xyz[rows], columns=["x_mm", "y_mm", "z_mm"])
    return ScanSamples(
        scan,
        patches,
        feats,
        torch.from_numpy(positive[rows].astype(np.float32)),
        cand_xyz,
        truth.n,
        int(hits.any(0).sum()),
    )


@dataclass
class TrainConfig:
    width: int = 12
    epochs: int = default("training", "epochs")
    steps_per_epoch: int = default("training", "steps_per_epoch")
    batch_size: int = 64
    neg_ratio: int = 3
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 6
    phase_dropout: float = 0.3
    mining_fraction: float = 0.5
    balance_positives: bool = False
    tta: int = DEFAULT_TTA
    phase_wrap_limit: float | None = DEFAULT_PHASE_WRAP_LIMIT
    max_fp_avg: float | None = None
    ema: float = 0.0
    seed: int = default("training", "seed")


def augment(x: torch.Tensor, f: torch.Tensor, gen: torch.Generator, phase_dropout: float) -> tuple:
    """Random augmentation of a batch (in place on copies); see the module docstring."""
    x = x.float().clone()
    f = f.clone()
    n = x.shape[0]

    def coin(p=0.5):
        return torch.rand(n, generator=gen) < p

    for axis in (2, 3, 4):
        flip = coin()
        if flip.any():
            x[flip] = x[flip].flip(axis)
    swap = coin()
    if swap.any():
        x[swap] = x[swap].transpose(2, 3)
    mag = [0, 2]
    gain = torch.exp(0.25 * torch.randn(n, generator=gen)).view(n, 1, 1, 1, 1)
    gamma = torch.exp(0.2 * torch.randn(n, generator=gen)).view(n, 1, 1, 1, 1)
    m = x[:, mag].clamp_min(0)
    m = (m**gamma) * gain
    # linear bias ramp along a random direction, +-15%
    g = torch.linspace(-1, 1, x.shape[-1])
    direction = torch.randn(n, 3, generator=gen)
    direction = direction / direction.norm(dim=1, keepdim=True)
    ramp = (
        direction[:, 0].view(n, 1, 1, 1) * g.view(1, -1, 1, 1)
        + direction[:, 1].view(n, 1, 1, 1) * g.view(1, 1, -1, 1)
        + direction[:, 2].view(n, 1, 1, 1) * g.view(1, 1, 1, -1)
    )
    m = m * (1 + 0.15 * torch.rand(n, generator=gen).view(n, 1, 1, 1) * ramp).unsqueeze(1)
    noise = 0.05 * torch.rand(n, generator=gen).view(n, 1, 1, 1, 1)
    m = m + noise * torch.randn(m.shape, generator=gen)
    x[:, mag] = m
    # slice-thickness blur along the last axis (through-plane), on a third of the samples
    blur = coin(0.33)
    if blur.any():
        k = torch.tensor([0.25, 0.5, 0.25]).view(1, 1, 3)
        xb = x[blur]
        s = xb.shape
        flat = xb.reshape(-1, 1, s[-1])
        flat = F.conv1d(F.pad(flat, (1, 1), mode="replicate"), k)
        x[blur] = flat.reshape(s)
    drop = coin(phase_dropout) & has_phase(x)
    if drop.any():
        x, f = hide_phase(x, f, drop)
    return x, f


def sample_logits(
    net,
    samples: list[ScanSamples],
    device,
    batch: int = 512,
    tta: int = 1,
    phase_wrap_limit: float | None = None,
) -> list[np.ndarray]:
    """Network logits of every kept candidate of each scan, averaged over ``tta`` symmetric views,
    as the detect stage scores them (phase hidden beyond ``phase_wrap_limit``)."""
    net.eval()
    out = []
    with torch.inference_mode():
        for s in samples:
            res = []
            for i in range(0, len(s.labels), batch):
                x, f = (
                    s.patches[i : i + batch].float().to(device),
                    s.features[i : i + batch].to(device),
                )
                res.append(
                    view_averaged_logits(net, x, f, tta, wrapped_phase(x, phase_wrap_limit)).cpu()
                )
            out.append(torch.cat(res).numpy().astype(np.float64) if res else np.zeros(0))
    return out


def fit_operating_point(
    net,
    val: list[ScanSamples],
    device,
    tta: int = DEFAULT_TTA,
    max_fp_avg: float | None = None,
    phase_wrap_limit: float | None = None,
) -> dict:
    """:func:`~cmb.detect.calibration.operating_point` of ``net`` on validation scans, scored
    as the detect stage will score them."""
    logits = sample_logits(net, val, device, tta=tta, phase_wrap_limit=phase_wrap_limit)
    return operating_point(val, logits, tta, max_fp_avg, phase_wrap_limit)


def _slice_balanced_weights(samples: list[ScanSamples]) -> torch.Tensor:
    """Per-patch sampling weights that give each slice thickness a share of the positives
    proportional to the square root of its positive count, not to the count itself.

    Thin-slice SWI supplies most CMBs of a mixed cohort; drawn uniformly, the CMBs of
    thick-slice GRE (3-5 mm) are a small minority of what the network sees.
    """
    thickness = [round(2 * max(nib.load(s.scan.image).header.get_zooms()[:3])) / 2 for s in samples]
    n_pos: dict[float, float] = {}
    for t, s in zip(thickness, samples):
        n_pos[t] = n_pos.get(t, 0.0) + float(s.labels.sum())
    return torch.cat(
        [
            torch.full((len(s.labels),), 1.0 / math.sqrt(max(n_pos[t], 1.0)), dtype=torch.float64)
            for t, s in zip(thickness, samples)
        ]
    )


def check_samples(train: list[ScanSamples], val: list[ScanSamples]) -> None:
    """A clear error when the split cannot train a model: no CMB to learn from, or none to validate on."""
    if not any(bool((s.labels > 0).any()) for s in train):
        raise ValueError(
            f"no CMB among the candidates of the {len(train)} training scan(s): nothing to learn"
        )
    if not any(s.n_truth for s in val):
        names = ", ".join(s.scan.subject for s in val[:5]) + (", ..." if len(val) > 5 else "")
        raise ValueError(
            f"the validation scans ({names or 'none'}) hold no CMB: the best epoch, the calibration and "
            "the threshold are chosen on validation CMBs. Validate on more subjects (--val-fraction) "
            "or on annotated ones (--val-from)"
        )


def train_model(
    train: list[ScanSamples],
    val: list[ScanSamples],
    out_dir,
    cfg: TrainConfig,
    card: dict,
    init_dir=None,
    log_path=None,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> dict:
    """Train (or fine-tune from ``init_dir``), calibrate, choose the threshold, save; returns the model card.

    On a CUDA ``device`` the training steps run in mixed precision (bfloat16); the
    validation, calibration and threshold use float32, as the CPU detect stage does.
    """
    check_samples(train, val)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = torch.device(device)
    cuda = device.type == "cuda"
    if init_dir:
        net = load_model(init_dir).net.train()
    else:
        net = CandidateNet(len(PATCH_CHANNELS), cfg.width, n_features=5)
    net = net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = (
        torch.optim.swa_utils.AveragedModel(
            net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema), use_buffers=True
        )
        if cfg.ema
        else None
    )
    judged = ema.module if ema else net  # the network that is validated and saved
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)

    x_all = torch.cat([s.patches for s in train])
    f_all = torch.cat([s.features for s in train])
    y_all = torch.cat([s.labels for s in train])
    pos = torch.nonzero(y_all > 0)[:, 0]
    neg = torch.nonzero(y_all == 0)[:, 0]
    neg_weight = torch.ones(neg.numel(), dtype=torch.float64)
    pos_weight = _slice_balanced_weights(train)[pos] if cfg.balance_positives else None
    per_pos = max(1, cfg.batch_size // (1 + cfg.neg_ratio))
    per_neg = cfg.batch_size - per_pos

    log_rows = []
    best = (-1.0, None, -1, np.inf)  # partial FROC, weights, epoch, validation loss
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        net.train()
        losses = []
        bar = tqdm(
            range(cfg.steps_per_epoch),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not progress,
            leave=False,
        )
        for _ in bar:
            pi = (
                pos[torch.multinomial(pos_weight, per_pos, replacement=True, generator=gen)]
                if pos_weight is not None
                else pos[torch.randint(pos.numel(), (per_pos,), generator=gen)]
            )
            n_mined = int(round(per_neg * cfg.mining_fraction)) if epoch else 0
            ni = torch.cat(
                [
                    neg[torch.multinomial(neg_weight, n_mined, replacement=True, generator=gen)]
                    if n_mined
                    else torch.zeros(0, dtype=torch.long),
                    neg[torch.randint(neg.numel(), (per_neg - n_mined,), generator=gen)],
                ]
            )
            idx = torch.cat([pi, ni])
            x, f = augment(x_all[idx], f_all[idx], gen, cfg.phase_dropout)
            y = y_all[idx]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                logits = net(
                    x.to(device, non_blocking=True), f.to(device, non_blocking=True)
                ).float()
            loss = F.binary_cross_entropy_with_logits(logits, y.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if ema:
                ema.update_parameters(net)
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        sched.step()
        # hard-negative mining: draw negatives by their current probability
        with torch.inference_mode():
            net.eval()
            chunk = 4096 if cuda else 512
            probs = torch.cat(
                [
                    _mining_probabilities(
                        net, x_all[neg[i : i + chunk]], f_all[neg[i : i + chunk]], device
                    )
                    for i in range(0, neg.numel(), chunk)
                ]
            )
        neg_weight = probs.double() + 1e-3
        val_scores = sample_logits(judged, val, device, phase_wrap_limit=cfg.phase_wrap_limit)
        froc = validation_froc(val, val_scores)
        score = partial_froc(froc)
        val_y = np.concatenate([s.labels.numpy() for s in val]) if val else np.zeros(0)
        val_z = np.concatenate(val_scores) if val else np.zeros(0)
        val_loss = float(
            F.binary_cross_entropy_with_logits(
                torch.tensor(val_z), torch.tensor(val_y, dtype=torch.float64)
            )
        )
        row = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "val_loss": val_loss,
            "val_partial_froc": score,
            "lr": sched.get_last_lr()[0],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        log_rows.append(row)
        _log.info(
            "epoch %d: train loss %.4f, val loss %.4f, val partial FROC %.4f",
            epoch + 1,
            row["train_loss"],
            val_loss,
            score,
        )
        if log_path:
            write_text(log_path, pd.DataFrame(log_rows).to_csv(index=False, float_format="%.6g"))
        # With few validation CMBs the partial FROC moves in coarse steps and ties are
        # common: a tie goes to the lower validation loss.
        if (score, -val_loss) > (best[0], -best[3]):
            best = (
                score,
                {k: v.detach().clone() for k, v in judged.state_dict().items()},
                epoch + 1,
                val_loss,
            )
        elif epoch + 1 - best[2] >= cfg.patience:
            _log.info("early stop: no improvement for %d epochs", cfg.patience)
            break

    net.load_state_dict(best[1])
    point = fit_operating_point(net, val, device, cfg.tta, cfg.max_fp_avg, cfg.phase_wrap_limit)
    full = {
        **card,
        "input_channels": list(PATCH_CHANNELS),
        "features": list(FEATURES),
        "scales": [list(s) for s in SCALES],
        "voxel_spacing_mm": {"fine": SCALES[0][1], "coarse": SCALES[1][1]},
        "normalization": "preprocessed magnitude (N4, divided by the brain median); phase in radians / pi, paramagnetic positive",
        "screen": {**DEFAULT_SCREEN, **card.get("screen", {})},
        **point,
        "validation": {**point["validation"], "best_epoch": best[2]},
        "training": {
            **card.get("training", {}),
            "epochs_run": len(log_rows),
            "config": cfg.__dict__,
            "n_train_scans": len(train),
            "n_train_patches": int(y_all.numel()),
            "n_train_positive": int(pos.numel()),
            "seconds": round(time.perf_counter() - t0, 1),
            "log": log_rows,
        },
    }
    save_model(net, out_dir, full)
    return json.loads((Path(out_dir) / "model_card.json").read_text())


def _mining_probabilities(
    net, x: torch.Tensor, f: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """The network's probabilities of patches ``x`` (CPU), computed on ``device``, back on the CPU."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return torch.sigmoid(net(x.to(device).float(), f.to(device)).float()).cpu()


def split_by_subject(
    scans: list[Scan], val_fraction: float, seed: int, val_pool: set[str] | None = None
) -> tuple[list[Scan], list[Scan]]:
    """Train/validation split by subject (all sessions and runs of a subject on one side).

    Validation subjects are drawn from ``val_pool`` (subject ids) when given, else from all
    subjects; ``val_fraction`` is a fraction of the pool.
    """
    subjects = sorted({s.subject for s in scans})
    pool = [s for s in subjects if val_pool is None or s in val_pool]
    rng = np.random.default_rng(seed)
    rng.shuffle(pool)
    n_val = max(1, int(math.ceil(val_fraction * len(pool)))) if len(subjects) > 1 and pool else 0
    val_subjects = set(pool[:n_val])
    return (
        [s for s in scans if s.subject not in val_subjects],
        [s for s in scans if s.subject in val_subjects],
    )


def annotated_datasets(derivatives: list[Path], truths: list[Path]) -> list[list[Scan]]:
    """The annotated scans of each (derivatives, truth) pair; with several pairs, keys get a ``dN/`` prefix.

    The prefix keeps ``sub-01`` of two datasets two subjects.
    """
    if len(derivatives) != len(truths):
        raise ValueError(
            f"give one --truth per --derivatives (got {len(derivatives)} and {len(truths)})"
        )
    out = []
    for n, (der, truth) in enumerate(zip(derivatives, truths), start=1):
        scans = paired_scans(der, truth)
        if len(derivatives) > 1:
            scans = [replace(s, key=f"d{n}/{s.key}") for s in scans]
        out.append(scans)
    return out


def scan_data_description(scans: list[Scan]) -> dict:
    """Acquisitions and, for synthetic data, the generator seeds of the scans used."""
    seeds = set()
    for s in scans:
        params = s.truth.with_name(re.sub(r"_label-CMB_dseg\..*$", "_synth.json", s.truth.name))
        if params.exists():
            try:
                seeds.add(int(json.loads(params.read_text())["seed"]))
            except (ValueError, KeyError, TypeError):
                pass
    return {
        "n_scans": len(scans),
        "n_subjects": len({s.subject for s in scans}),
        "acquisitions": dict(pd.Series([s.acquisition for s in scans]).value_counts().sort_index()),
        "synthetic_cohort_seeds": sorted(seeds),
    }


def _unit_interval(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _init_model(text: str) -> Path:
    """An argparse type: a model folder, or ``shipped`` for the shipped default."""
    return DEFAULT_MODEL if text == "shipped" else Path(text)


def add_annotated_data_arguments(p) -> None:
    """``--derivatives`` and ``--truth`` (repeatable, in pairs: :func:`annotated_datasets`),
    shared by ``cmb train`` and ``cmb calibrate``."""
    p.add_argument(
        "--derivatives",
        required=True,
        type=Path,
        action="append",
        help="workflow output folder with the preprocessed scans (run the workflow up to "
        "preprocessing); repeat, with one --truth each, for several datasets",
    )
    p.add_argument(
        "--truth",
        required=True,
        type=Path,
        action="append",
        help="folder of *_label-CMB_dseg.nii.gz / .tsv annotations",
    )


def add_runtime_arguments(p) -> None:
    """``--threads``, ``--cpu`` and ``--no-progress``, shared by ``cmb train`` and ``cmb calibrate``."""
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads for PyTorch (default: its own choice)"
    )
    p.add_argument("--cpu", action="store_true", help="do not use a GPU even if one is visible")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def start_run(args) -> torch.device:
    """Logging to the terminal and the thread count of :func:`add_runtime_arguments`; returns the device to use."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(prefer_gpu=not args.cpu)
    _log.info("device: %s", torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    return device


def build_parser(parser=None):
    p = parser or argparse.ArgumentParser(prog="cmb train")
    add_annotated_data_arguments(p)
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    p.add_argument(
        "--init",
        type=_init_model,
        help="fine-tune from this model folder; 'shipped' is the shipped "
        "default (cmb/detect/weights/default)",
    )
    p.add_argument("--name", default="cmb-candidate-net")
    p.add_argument("--val-fraction", type=float)
    p.add_argument(
        "--val-from",
        type=int,
        action="append",
        help="draw validation subjects only from the N-th --derivatives/--truth pair (1-based; repeatable), "
        "e.g. your own annotated scans when fine-tuning on them plus synthetic ones",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--width", type=int, default=TrainConfig.width)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--patience", type=int, default=TrainConfig.patience)
    p.add_argument(
        "--n-hard", type=int, default=300, help="darkest negatives kept per training scan"
    )
    p.add_argument(
        "--n-random", type=int, default=200, help="random negatives kept per training scan"
    )
    p.add_argument(
        "--balance-positives",
        action="store_true",
        help="draw positives with each slice thickness weighted by the square root of its CMB count",
    )
    p.add_argument(
        "--phase-dropout",
        type=_unit_interval,
        default=TrainConfig.phase_dropout,
        metavar="P",
        help="probability of hiding a training patch's phase, so that one model serves scans with and "
        "without phase",
    )
    p.add_argument(
        "--ema",
        type=_unit_interval,
        default=TrainConfig.ema,
        metavar="DECAY",
        help="validate and save an exponential moving average of the weights with this decay per step "
        "(e.g. 0.99); 0 turns it off",
    )
    add_operating_point_arguments(p)
    p.add_argument("--seed", type=int)
    add_runtime_arguments(p)
    return add_config_sections(p, "training")


def run(args) -> int:
    device = start_run(args)
    t0 = time.perf_counter()
    try:
        datasets = annotated_datasets(args.derivatives, args.truth)
    except ValueError as err:
        print(f"cmb train: error: {err}", file=sys.stderr)
        return 2
    scans = [s for d in datasets for s in d]
    if len({s.subject for s in scans}) < 2:
        print(
            f"cmb train: error: need scans of at least 2 subjects with ground truth, found {len(scans)} "
            f"(derivatives {', '.join(map(str, args.derivatives))}; truth {', '.join(map(str, args.truth))})",
            file=sys.stderr,
        )
        return 2
    val_pool = None
    if args.val_from:
        if not all(1 <= n <= len(datasets) for n in args.val_from):
            print(
                f"cmb train: error: --val-from must be between 1 and {len(datasets)}",
                file=sys.stderr,
            )
            return 2
        val_pool = {s.subject for n in args.val_from for s in datasets[n - 1]}
    train_scans, val_scans = split_by_subject(scans, args.val_fraction, args.seed, val_pool)
    _log.info("%d training scans, %d validation scans", len(train_scans), len(val_scans))
    screen = load_model(args.init).card.get("screen") if args.init else None
    train = [
        sample_scan(s, screen, args.n_hard, args.n_random, seed=args.seed + i, device=device)
        for i, s in enumerate(tqdm(train_scans, desc="training scans", disable=args.no_progress))
    ]
    val = [
        sample_scan(s, screen, keep_all=True, device=device)
        for s in tqdm(val_scans, desc="validation scans", disable=args.no_progress)
    ]
    t_data = time.perf_counter() - t0
    cfg = TrainConfig(
        width=args.width,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        balance_positives=args.balance_positives,
        tta=args.tta,
        phase_wrap_limit=args.phase_wrap_limit,
        max_fp_avg=args.max_fp_avg,
        ema=args.ema,
        phase_dropout=args.phase_dropout,
        seed=args.seed,
    )
    card = {
        "name": args.name,
        "training": {
            "command": "cmb train "
            + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["train"] else sys.argv[1:]),
            "derivatives": [str(p) for p in args.derivatives],
            "truth": [str(p) for p in args.truth],
            "init": str(args.init) if args.init else None,
            "seed": args.seed,
            "data": {
                "train": scan_data_description(train_scans),
                "validation": scan_data_description(val_scans),
            },
            "data_seconds": round(t_data, 1),
            "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        },
    }
    if screen:
        card["screen"] = screen
    try:
        check_samples(train, val)
    except ValueError as err:
        print(f"cmb train: error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    result = train_model(
        train,
        val,
        args.out,
        cfg,
        card,
        init_dir=args.init,
        log_path=args.out / "training_log.csv",
        progress=not args.no_progress,
        device=device,
    )
    print(model_summary(args.out, result, time.perf_counter() - t0))
    return 0


def model_summary(folder, card: dict, seconds: float) -> str:
    """Two lines on a written model folder: where, which weights, and its validation operating point."""
    v = card["validation"]
    return (
        f"model: {folder} (weights sha256 {card['weights_sha256'][:12]}, {card.get('tta', 1)} test-time view(s), "
        f"phase wrap limit {card.get('phase_wrap_limit')})\n"
        f"validation ({v['n_scans']} scans, {v['n_cmb']} CMBs): screen sensitivity {v['screen_sensitivity']:.3f}, "
        f"sensitivity {v['sensitivity']:.3f}, FPavg {v['fp_avg']:.2f}, F1 {v['f1']:.3f}, "
        f"partial FROC {v['partial_froc']:.3f} at threshold {card['threshold']:.3f}; {seconds:.0f} s in all"
    )


def main(argv=None) -> int:
    """``python -m cmb.detect.training``: as ``cmb train``."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
