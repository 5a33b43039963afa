import json

import numpy as np
import pandas as pd
import pytest
import torch

from cmb.detect.inference import hand_features, score_candidates
from cmb.detect.model import CandidateNet, ModelError, load_model, save_model, select_device
from cmb.detect.patches import (
    DEFAULT_PHASE_WRAP_LIMIT,
    N_SYMMETRIES,
    PatchSampler,
    phase_wrap_density,
    symmetric_views,
)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    net = CandidateNet(in_channels=3, width=4)
    save_model(net, tmp_path / "m", {"input_channels": ["magnitude", "phase", "phase_present"]})
    return net, tmp_path / "m"


def test_round_trip_gives_same_outputs(saved):
    net, folder = saved
    x = torch.randn(2, 3, 16, 16, 16)
    loaded = load_model(folder)
    assert torch.equal(net.eval()(x), loaded.net(x))
    assert loaded.card["hyper_parameters"] == {"in_channels": 3, "width": 4, "n_features": 0}


def test_altered_weights_fail_the_checksum(saved):
    _, folder = saved
    w = folder / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="model.safetensors: SHA-256 .* does not match"):
        load_model(folder)


def test_missing_and_non_safetensors_files(saved, tmp_path):
    _, folder = saved
    with pytest.raises(ModelError, match="model card missing"):
        load_model(tmp_path / "nowhere")
    # A pickle in place of the weights, with a matching checksum: still refused, never unpickled.
    w = folder / "model.safetensors"
    torch.save({"x": torch.zeros(1)}, w)
    card = json.loads((folder / "model_card.json").read_text())
    from cmb.detect.model import sha256_file

    card["weights_sha256"] = sha256_file(w)
    (folder / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_model(folder)


def test_architecture_mismatch_names_the_file(saved):
    _, folder = saved
    card = json.loads((folder / "model_card.json").read_text())
    card["hyper_parameters"]["width"] = 8
    (folder / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="do not match the CandidateNet architecture"):
        load_model(folder)


def test_cpu_fallback():
    assert select_device().type in ("cpu", "cuda")
    assert select_device(prefer_gpu=False).type == "cpu"


@pytest.mark.parametrize(
    "key, value, message",
    [
        *[("tta", v, "'tta' must be an integer from 1 to 16") for v in (0, 17, 2.5, "8")],
        *[
            ("phase_wrap_limit", v, "'phase_wrap_limit' must be a number >= 0 or null")
            for v in (-0.1, "0.15", True)
        ],
    ],
)
def test_a_card_with_an_invalid_scoring_setting_is_refused(saved, key, value, message):
    _, folder = saved
    card = json.loads((folder / "model_card.json").read_text())
    card[key] = value
    (folder / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="model_card.json: " + message):
        load_model(folder)


def test_symmetric_views_are_the_sixteen_training_symmetries():
    x = torch.randn(1, 2, 5, 5, 5)
    views = list(symmetric_views(x, N_SYMMETRIES))
    assert N_SYMMETRIES == 16 and torch.equal(views[0], x)
    assert torch.equal(views[1], x.flip(2))  # left-right first
    flat = {tuple(v.flatten().tolist()) for v in views}
    assert len(flat) == 16  # all distinct on a patch without symmetry
    # each keeps the through-plane axis (B0) through-plane: the same set of values per k-slice
    for v in views:
        assert {round(float(s), 4) for s in v[0, 0].sum((0, 1))} == {
            round(float(s), 4) for s in x[0, 0].sum((0, 1))
        }
    with pytest.raises(ValueError, match="1 to 16 views"):
        next(symmetric_views(x, 0))


def test_score_candidates_averages_the_views():
    torch.manual_seed(1)
    net = CandidateNet(in_channels=6, width=4, n_features=5).eval()
    mag = np.random.default_rng(0).random((24, 24, 12)).astype(np.float32)
    mask = np.ones(mag.shape, bool)
    table = pd.DataFrame(
        {
            "i": [12, 8],
            "j": [12, 15],
            "k": [6, 5],
            "score": [0.5, 0.3],
            "diameter_mm": [2.0, 3.0],
            "sphericity": [0.9, 0.4],
            "phase_mean": [np.nan, np.nan],
        }
    )
    zooms = (1.0, 1.0, 2.0)
    one, _ = score_candidates(net, mag, mask, None, zooms, table, torch.device("cpu"), tta=1)
    two, _ = score_candidates(net, mag, mask, None, zooms, table, torch.device("cpu"), tta=2)
    x = PatchSampler(mag, mask, None, zooms)(table[["i", "j", "k"]].to_numpy(float))
    f = torch.from_numpy(hand_features(table, False))
    with torch.inference_mode():
        flipped = net(x.flip(2), f).numpy()
    np.testing.assert_allclose(two, (one + flipped) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(one, two)


def test_a_candidate_in_wrapped_phase_is_scored_without_it():
    torch.manual_seed(2)
    net = CandidateNet(in_channels=6, width=4, n_features=5).eval()
    rng = np.random.default_rng(1)
    mag = rng.random((48, 48, 24)).astype(np.float32)
    phase = rng.normal(0, 0.1, mag.shape).astype(np.float32)
    phase[26:] = np.angle(
        np.exp(2.2j * np.indices(phase[26:].shape)[0])
    )  # air-cavity fringes along i
    mask = np.ones(mag.shape, bool)
    table = pd.DataFrame(
        {
            "i": [12, 40],
            "j": [24, 24],
            "k": [12, 12],
            "score": [0.5, 0.3],
            "diameter_mm": [2.0, 3.0],
            "sphericity": [0.9, 0.4],
            "phase_mean": [0.4, -0.2],
        }
    )
    zooms = (1.0, 1.0, 2.0)
    cpu = torch.device("cpu")
    x = PatchSampler(mag, mask, phase, zooms)(table[["i", "j", "k"]].to_numpy(float))
    density = phase_wrap_density(x)
    assert density[0] < 0.05 < DEFAULT_PHASE_WRAP_LIMIT < 0.3 < density[1]
    kept, kept_hidden = score_candidates(
        net, mag, mask, phase, zooms, table, cpu, tta=2, phase_wrap_limit=None
    )
    ruled, hidden = score_candidates(
        net, mag, mask, phase, zooms, table, cpu, tta=2, phase_wrap_limit=DEFAULT_PHASE_WRAP_LIMIT
    )
    no_phase, _ = score_candidates(net, mag, mask, None, zooms, table, cpu, tta=2)
    assert hidden.tolist() == [False, True] and not kept_hidden.any()
    np.testing.assert_allclose(ruled[0], kept[0], rtol=1e-5, atol=1e-6)  # clean phase: used
    np.testing.assert_allclose(
        ruled[1], no_phase[1], rtol=1e-5, atol=1e-6
    )  # wrapped: scored as without phase
    assert not np.isclose(ruled[1], kept[1])


def test_saved_files_are_readable_like_any_new_file(saved):
    import os
    import stat

    _, folder = saved
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "model_card.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o666 & ~umask, name
