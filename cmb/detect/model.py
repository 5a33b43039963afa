"""Detector networks and their weights: safetensors files checked against a JSON model card.

A model folder holds ``model.safetensors`` and ``model_card.json``. The card
names the architecture and its hyper-parameters, the input channels, voxel
spacing and normalization, the training data, the validation metrics and the
operating threshold, and the SHA-256 of the weights file. Loading verifies the
checksum before reading a byte of the tensors, builds the architecture named by
the card and loads the tensors strictly: a missing, corrupt, altered or
mismatched file is a :class:`ModelError` naming the file. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cmb.atomic import atomic_path, write_json
from cmb.detect.patches import N_SYMMETRIES

__all__ = [
    "ModelError",
    "CandidateNet",
    "ARCHITECTURES",
    "select_device",
    "sha256_file",
    "save_model",
    "load_model",
    "LoadedModel",
]

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "model_card.json"


class ModelError(RuntimeError):
    """A model folder that cannot be used; the message names the file and the problem."""


def _block(cin: int, cout: int) -> nn.Sequential:
    # Batch norm, not instance norm: in eval mode a candidate's score does not depend
    # on the other patches of its batch nor on the batch size.
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm3d(cout),
        nn.LeakyReLU(0.1),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm3d(cout),
        nn.LeakyReLU(0.1),
    )


class CandidateNet(nn.Module):
    """A small 3D classifier of patches centred on candidates (false-positive reduction).

    Input ``(N, C, D, H, W)`` multi-scale patches (:data:`cmb.detect.patches.PATCH_CHANNELS`)
    and optionally ``(N, F)`` hand features of the candidate; output one logit per
    patch. Global average pooling makes the head independent of the patch size.
    """

    def __init__(self, in_channels: int = 6, width: int = 16, n_features: int = 0):
        super().__init__()
        self.in_channels, self.width, self.n_features = in_channels, width, n_features
        self.enc1 = _block(in_channels, width)
        self.enc2 = _block(width, 2 * width)
        self.enc3 = _block(2 * width, 4 * width)
        self.pool = nn.MaxPool3d(2)
        self.head = nn.Sequential(
            nn.Linear(4 * width + n_features, 2 * width), nn.LeakyReLU(0.1), nn.Linear(2 * width, 1)
        )

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        x = self.enc1(x)
        x = self.enc2(self.pool(x))
        x = self.enc3(self.pool(x))
        x = x.mean(dim=(2, 3, 4))
        if self.n_features:
            x = torch.cat([x, features], dim=1)
        return self.head(x)[:, 0]

    def hyper_parameters(self) -> dict:
        return {"in_channels": self.in_channels, "width": self.width, "n_features": self.n_features}


ARCHITECTURES = {"CandidateNet": CandidateNet}


def select_device(prefer_gpu: bool = True, setting: str = "detection.use_gpu") -> torch.device:
    """CUDA when it is there (and wanted), else CPU.

    A GPU asked for (``prefer_gpu``, the config key ``setting``) where none is visible
    gives the CPU, with one warning line on the ``cmb.detect`` logger that says why (torch
    built without CUDA, or no device visible) and how to silence it. Torch's own warnings
    from probing CUDA (a driver that is there but unusable) are folded into that line."""
    if not prefer_gpu:
        return torch.device("cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        return torch.device("cuda")
    if torch.version.cuda is None:
        why = f"this torch ({torch.__version__}) is a CPU-only build"
    else:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = f"no CUDA device is visible (torch {torch.__version__}, CUDA {torch.version.cuda}"
        why += f", CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ")"
    notes = "; ".join(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))
    logging.getLogger("cmb.detect").warning(
        "GPU requested but %s%s: running on the CPU (same results, slower); "
        "set %s: false (or --cpu) to silence this",
        why,
        f" [{notes}]" if notes else "",
        setting,
    )
    return torch.device("cpu")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class LoadedModel:
    net: nn.Module
    card: dict
    folder: Path


def save_model(net: nn.Module, folder: Path, card: dict) -> Path:
    """Write weights (safetensors) and the model card with the weights' SHA-256; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_NAME
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp))
    full = {
        **card,
        "architecture": type(net).__name__,
        "hyper_parameters": net.hyper_parameters(),
        "weights_file": WEIGHTS_NAME,
        "weights_sha256": sha256_file(weights),
    }
    write_json(folder / CARD_NAME, full)
    return folder


def load_model(folder: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Load and verify a model folder; raise :class:`ModelError` naming the file on any problem."""
    folder = Path(folder)
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise ModelError(f"{card_path}: model card missing")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{card_path}: unreadable model card ({e})") from None
    weights = folder / card.get("weights_file", WEIGHTS_NAME)
    if not weights.is_file():
        raise ModelError(f"{weights}: weights file missing")
    digest = sha256_file(weights)
    if digest != card.get("weights_sha256"):
        raise ModelError(
            f"{weights}: SHA-256 {digest[:12]}... does not match the model card "
            f"({str(card.get('weights_sha256'))[:12]}...); the file is corrupt or was replaced"
        )
    tta = card.get("tta", 1)
    if not (isinstance(tta, int) and 1 <= tta <= N_SYMMETRIES):
        raise ModelError(
            f"{card_path}: 'tta' must be an integer from 1 to {N_SYMMETRIES}, got {tta!r}"
        )
    limit = card.get("phase_wrap_limit")
    if limit is not None and not (
        isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit >= 0
    ):
        raise ModelError(
            f"{card_path}: 'phase_wrap_limit' must be a number >= 0 or null, got {limit!r}"
        )
    arch = ARCHITECTURES.get(card.get("architecture", ""))
    if arch is None:
        raise ModelError(f"{card_path}: unknown architecture {card.get('architecture')!r}")
    try:
        net = arch(**card.get("hyper_parameters", {}))
    except TypeError as e:
        raise ModelError(
            f"{card_path}: hyper-parameters do not fit {card['architecture']} ({e})"
        ) from None
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{weights}: not a readable safetensors file ({e})") from None
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelError(
            f"{weights}: weights do not match the {card['architecture']} architecture ({first})"
        ) from None
    return LoadedModel(net=net.to(device).eval(), card=card, folder=folder)
