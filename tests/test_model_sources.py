"""Models users bring: timm architectures by name, and their own architecture by import path."""

import json
import sys
import textwrap

import pytest
import torch
from builders import batches, randomise_batchnorm

from compress import prune
from compress.benchmark import make_session
from compress.cli import main
from compress.criteria import importance_factory, make_scorer
from compress.errors import ModelError
from compress.export import check_parity, export_onnx
from compress.pruning import count_macs_params
from compress.serialization import load_pruned
from compress.zoo import get_spec, load_model

FAST = ["--latency-runs", "3", "--latency-min-seconds", "0", "--latency-window-seconds", "0", "--warmup", "1"]


@pytest.mark.parametrize("name", ["timm:test_resnet", "timm:test_efficientnet", "timm:regnetx_002"])
def test_timm_cnns_prune_export_and_match_pytorch(name, tmp_path):
    pytest.importorskip("timm")
    torch.manual_seed(0)
    spec = get_spec(name)
    assert spec.source == "timm" and spec.input_size[0] == 3
    model = randomise_batchnorm(spec.build(10))
    data = batches(n=16, shape=(3, 32, 32), batch_size=8, classes=10)
    scorer = make_scorer("causal").fit(model, data)
    result = prune(model, importance_factory("causal", scorer), 0.3, data[0][0], round_to=4)
    assert result.kept_unpruned == {}
    assert count_macs_params(result.model, data[0][0])[0] < 0.7 * count_macs_params(model, data[0][0])[0]
    session = make_session(export_onnx(result.model, data[0][0], tmp_path / "m.onnx").path)
    assert check_parity(session, result.model, data[1][0], tolerance=1e-4).max_abs_diff <= 1e-4


def test_timm_names_weights_and_mistakes(tmp_path):
    timm = pytest.importorskip("timm")
    spec = get_spec("timm:test_resnet")
    assert spec.input_size == (3, 160, 160) and spec.mean == (0.5, 0.5, 0.5)  # timm's pretrained config
    weights = tmp_path / "w.pt"
    torch.manual_seed(1)
    state = timm.create_model("test_resnet", num_classes=3).state_dict()
    torch.save(state, weights)
    loaded = load_model(spec, weights, num_classes=3)
    assert torch.equal(loaded.model.state_dict()["fc.weight"], state["fc.weight"])
    with pytest.raises(ModelError, match=r"did you mean 'timm:test_resnet'"):
        get_spec("timm:test_resnett")
    with pytest.raises(ModelError, match="timm weights test_resnet have 1000 classes but the data has 3"):
        load_model(spec, "DEFAULT", num_classes=3)


MY_MODELS = """
import torch.nn as nn
import torch.nn.functional as F


class Tiny(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.bn(self.conv(x)))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Padded(Tiny):
    # channel padding torch-pruning maps wrongly: the group must stay whole, with one warning line
    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4))[:, 4:12]
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv2(x)), 1).flatten(1))


def build():
    return Tiny(num_classes=10, width=16)


def mlp(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes))
"""


@pytest.fixture
def my_models(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent(MY_MODELS))
    monkeypatch.chdir(tmp_path)  # `compress` imports from where it runs
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    sys.modules.pop("my_models", None)


def _weights(my_models, name: str):
    torch.manual_seed(0)
    path = my_models / f"{name}.pt"
    torch.save(randomise_batchnorm(get_spec(f"my_models:{name}", trust_code=True).build(10)).state_dict(), path)
    return str(path)


def test_an_import_path_needs_trust_and_runs_end_to_end(my_models, capsys):
    out = my_models / "out"
    args = ["run", "--model", "my_models:build", "--weights", _weights(my_models, "build"), "--image-size", "8"]
    args += ["--mean", "0.3", "--std", "0.4"]
    args += ["--ratios", "0.5", "--allocation", "uniform", "--criteria", "causal", "--out", str(out), *FAST]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "imports my_models and runs its code; pass --trust-code" in err
    assert main([*args, "--trust-code", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == "my_models:build"
    assert report["variants"][1]["widths"]["conv"] == 8  # build() made it 16 wide
    with pytest.raises(ModelError, match="pass --trust-code"):
        load_pruned(out / "pruned.pt")
    assert load_pruned(out / "pruned.pt", trust_code=True).conv.out_channels == 8


def test_a_group_kept_whole_warns_once_in_one_line_and_quiet_hides_it(my_models, capsys):
    args = ["run", "--model", "my_models:Padded", "--weights", _weights(my_models, "Padded"), "--trust-code"]
    args += [
        "--image-size",
        "8",
        "--mean",
        "0.3",
        "--std",
        "0.4",
        "--ratios",
        "0.25,0.5",
        "--criteria",
        "causal,l1",
        *FAST,
    ]
    assert main([*args, "--out", str(my_models / "a")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("compress: warning: keeping group conv unpruned")
    report = json.loads((my_models / "a" / "report.json").read_text())
    assert report["warnings"] == [warnings[0].removeprefix("compress: warning: ")]
    assert "## Warnings" in (my_models / "a" / "report.md").read_text()
    assert main([*args, "--out", str(my_models / "b"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert json.loads((my_models / "b" / "report.json").read_text())["warnings"] == report["warnings"]


def test_import_path_mistakes_are_one_line(my_models):
    with pytest.raises(ModelError, match=r"cannot import no_such_module:build \(ModuleNotFoundError"):
        get_spec("no_such_module:build", trust_code=True)
    with pytest.raises(ModelError, match=r"cannot import my_models:nothing \(AttributeError"):
        get_spec("my_models:nothing", trust_code=True)
    spec = get_spec("my_models:Tiny", trust_code=True)
    assert spec.input_size[0] == 1 and spec.source == "import"  # channels read off the first conv
    assert spec.build(4).fc.out_features == 4  # num_classes passed where the factory takes it


def test_a_model_without_convolutions_takes_its_channel_count_from_mean_and_std(my_models):
    from compress.config import RunConfig
    from compress.pipeline import load_inputs

    spec = get_spec("my_models:mlp", trust_code=True)
    assert (spec.input_size[0], spec.channels_known) == (3, False)  # nothing in it says 1 or 3
    config = RunConfig(model="my_models:mlp", trust_code=True, weights=_weights(my_models, "mlp"), image_size=8)
    config.mean, config.std = (0.3,), (0.4,)  # digits' one channel, as --mean 0.3 --std 0.4 give it
    inputs = load_inputs(config.validate())
    assert inputs.splits.input_size == (1, 8, 8)
    assert get_spec("my_models:Tiny", trust_code=True).channels_known  # a convolution's in_channels decide
