import json

import pytest
import torch

from cmb.detect.model import CandidateNet, ModelError, load_model, save_model, select_device


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
