import pytest
import torch
import torch.nn as nn

from compress.errors import ModelError
from compress.zoo import DigitsCNN, get_spec, load_model, read_state_dict


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_shipped_default_loads_and_is_accurate(digits_splits):
    from compress.artifacts import sha256
    from compress.evaluation import evaluate

    spec = get_spec("digits-cnn")
    loaded = load_model(spec, num_classes=10)
    assert loaded.weights_sha256 == sha256(spec.default_weights)  # the file's own digest
    state = read_state_dict(spec.default_weights)
    assert all(torch.equal(value, state[name]) for name, value in loaded.model.state_dict().items())
    assert loaded.model(digits_splits.example_batch(5)).shape == (5, 10)
    accuracy = evaluate(loaded.model, digits_splits.loader("evaluation", 256))["top1"]
    assert accuracy >= 97.0


def test_state_dict_layouts_are_unwrapped(tmp_path):
    torch.manual_seed(0)
    state = DigitsCNN().state_dict()
    plain = read_state_dict(_save(tmp_path / "a.pt", state))
    nested = read_state_dict(_save(tmp_path / "b.pt", {"state_dict": state, "epoch": 3}))
    parallel = read_state_dict(_save(tmp_path / "c.pt", {"model": {f"module.{k}": v for k, v in state.items()}}))
    for read in (plain, nested, parallel):
        assert read.keys() == state.keys()
        assert all(torch.equal(read[k], v) for k, v in state.items())  # the tensors themselves, not just names


def test_bad_checkpoints_give_clear_errors(tmp_path):
    spec = get_spec("digits-cnn")
    with pytest.raises(ModelError, match="not found"):
        load_model(spec, tmp_path / "missing.pt")
    with pytest.raises(ModelError, match="is a directory"):
        load_model(spec, tmp_path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        load_model(spec, tmp_path / "empty.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(ModelError, match="corrupt or not a PyTorch file"):
        load_model(spec, tmp_path / "junk.pt")
    good = tmp_path / "good.pt"
    _save(good, DigitsCNN().state_dict())
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:1000])  # an interrupted copy: torch's zip error
    with pytest.raises(ModelError) as info:  # is one sentence here, not its paragraph of advice
        load_model(spec, tmp_path / "cut.pt")
    assert str(info.value).endswith(
        "(RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory)"
    )
    (tmp_path / "notes.txt").write_text("hello\n")  # the weights-only unpickler raises KeyError on it
    with pytest.raises(ModelError, match="corrupt or not a PyTorch file"):
        load_model(spec, tmp_path / "notes.txt")
    _save(tmp_path / "none.pt", {"epoch": 3})
    with pytest.raises(ModelError, match="no weights"):
        load_model(spec, tmp_path / "none.pt")


def test_pickled_model_needs_trust(tmp_path):
    spec = get_spec("digits-cnn")
    torch.manual_seed(0)
    whole = DigitsCNN().eval()
    path = _save(tmp_path / "whole.pt", whole)
    with pytest.raises(ModelError, match="--trust-checkpoint"):
        load_model(spec, path)
    loaded = load_model(spec, path, trust_checkpoint=True).model
    assert isinstance(loaded, nn.Module)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(loaded.eval()(x), whole(x), rtol=0, atol=0)


def test_weights_that_do_not_fit_are_named(tmp_path):
    spec = get_spec("digits-cnn")
    with pytest.raises(ModelError, match=r"have 7 output classes \(fc.weight\) but the data has 10"):
        load_model(spec, _save(tmp_path / "seven.pt", DigitsCNN(num_classes=7).state_dict()))
    state = DigitsCNN().state_dict()
    state.pop("conv2.weight")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ModelError, match=r"missing keys \[conv2.weight\].*unexpected keys \[extra.weight\]"):
        load_model(spec, _save(tmp_path / "keys.pt", state))
    wide = DigitsCNN(widths=(16, 64, 128, 128)).state_dict()
    with pytest.raises(ModelError, match=r"shape mismatches.*conv1.weight \(16, 1, 3, 3\) vs \(32, 1, 3, 3\)"):
        load_model(spec, _save(tmp_path / "wide.pt", wide))


def test_registry_resolves_torchvision_and_suggests_names():
    spec = get_spec("resnet18")
    assert spec.source == "torchvision" and spec.input_size == (3, 224, 224)
    assert spec.build(7).fc.out_features == 7
    with pytest.raises(ModelError, match="did you mean 'resnet18'"):
        get_spec("resnet181")
    with pytest.raises(ModelError, match="--weights"):
        load_model(spec, None)


def test_cifar_resnet_loads_community_checkpoint_layout(tmp_path):
    from compress.cifar_resnet import CifarResNet

    # As saved by nn.DataParallel on an old PyTorch: "module." prefixes, no num_batches_tracked.
    torch.manual_seed(0)
    source = CifarResNet(20).eval()
    state = {f"module.{k}": v for k, v in source.state_dict().items() if "num_batches" not in k}
    path = _save(tmp_path / "resnet20.th", {"state_dict": state, "best_prec1": 91.7})
    loaded = load_model(get_spec("cifar_resnet20"), path, num_classes=10).model
    for name, value in loaded.state_dict().items():
        if "num_batches" not in name:
            assert torch.equal(value, state[f"module.{name}"]), name
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)
    assert loaded(x).shape == (2, 10)
    option_b = {f"module.{k}": v for k, v in CifarResNet(20, shortcut="B").state_dict().items()}
    with pytest.raises(ModelError, match=r"unexpected keys \[layer2.0.shortcut.0.weight"):
        load_model(get_spec("cifar_resnet20"), _save(tmp_path / "b.th", {"state_dict": option_b}), num_classes=10)
    option_b_model = load_model(get_spec("cifar_resnet20_b"), tmp_path / "b.th", num_classes=10).model
    assert all(torch.equal(v, option_b[f"module.{k}"]) for k, v in option_b_model.state_dict().items())
