"""rtk import: foreign CIFAR ResNets (akamaster layout, renamed plain state dicts) -> rtk checkpoints.

The foreign models are written here, independently of rtk.model, after akamaster/pytorch_resnet_cifar10's
resnet.py (option A: `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes//4, planes//4))`; option B: a 1x1
conv + BN projection), and saved as their owners save them: on a GPU, under "state_dict", with the
"module." prefix of DataParallel.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import fails_cleanly, make_readout_checkpoint
from torch import nn

from rtk import checkpoint, importer
from rtk.cli import main
from rtk.errors import RtkError
from rtk.fileio import sha256_file

VALIDATE_IMAGES = 2000
STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))  # another mean/std (CIFAR-100's)


class PadShortcut(nn.Module):
    """akamaster's option-A LambdaLayer: every second pixel, planes // 4 zero channels on each side."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)


class AkaBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, option: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes) if option == "A" else nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class AkaResNet(nn.Module):
    def __init__(self, depth: int, option: str = "A"):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        widths, layers, in_planes = (16, 32, 64), [], 16
        for i, planes in enumerate(widths):
            blocks = []
            for b in range(n):
                blocks.append(AkaBlock(in_planes, planes, 2 if i and not b else 1, option))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, 10)
        torch.manual_seed(depth)
        for m in self.modules():  # BN statistics of a trained model, not the identity of a fresh one
            if isinstance(m, nn.BatchNorm2d):
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


def renamed(state_dict: dict) -> dict:
    """Another project's names for the same tensors, in the same order (role suffixes kept)."""
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"^conv1\.", "stem.conv.", key)
        key = re.sub(r"^bn1\.", "stem.norm.", key)
        key = re.sub(r"^layer(\d)\.(\d+)\.conv(\d)\.", r"body.\1.\2.conv_\3.", key)
        key = re.sub(r"^layer(\d)\.(\d+)\.bn(\d)\.", r"body.\1.\2.norm_\3.", key)
        out[re.sub(r"^linear\.", "head.", key)] = value
    return out


def save_as_on_cuda(obj, path: Path, monkeypatch: pytest.MonkeyPatch, **kw) -> Path:
    """torch.save as on a GPU: every storage tagged "cuda:0" (torch.save asks location_tag for it),
    so a plain torch.load on a machine without CUDA fails, as it does on the owners' files."""
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(obj, path, **kw)
    assert b"cuda:0" in path.read_bytes()
    return path


def akamaster_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, depth: int = 8, option: str = "A",
                   name: str = "aka.th") -> tuple[AkaResNet, Path]:
    model = AkaResNet(depth, option).eval()
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = save_as_on_cuda({"epoch": 200, "state_dict": sd, "best_prec1": 91.5}, tmp_path / name, monkeypatch)
    return model, path


def _images(n: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def assert_same_network(source: nn.Module, ckpt_path: Path) -> None:
    """Every weight of `source` is in the checkpoint bit for bit, and the logits agree.

    Logits agree to float rounding, not bit for bit: akamaster pools with avg_pool2d(8) and rtk with
    AdaptiveAvgPool2d(1); the two kernels add the 64 values in another order (measured here:
    differences up to ~2e-7). Everything before the pool is the same arithmetic.
    """
    model, _ = checkpoint.load(ckpt_path)
    theirs = list(source.state_dict().values())
    ours = list(model.state_dict().values())
    assert len(theirs) == len(ours) and all(torch.equal(a, b) for a, b in zip(theirs, ours))
    with torch.no_grad():
        expected, got = source(_images()), model(_images())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert torch.equal(got.argmax(1), expected.argmax(1))


def _no_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RTK_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))


def invoke(*args: str) -> object:
    return CliRunner().invoke(main, ["import", *map(str, args)])


def assert_refused(result, *fragments: str) -> str:
    """Exit 1, nothing on stdout, one `error: ...` line on stderr holding every fragment."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and result.stdout == "" and len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Both layouts, logits against the source model


def test_akamaster_checkpoint_saved_on_a_gpu_imports(tmp_path, monkeypatch):
    _no_data(monkeypatch, tmp_path)
    source, path = akamaster_file(tmp_path, monkeypatch)
    out = tmp_path / "runs" / "resnet8" / "checkpoint.pt"
    result = invoke(path, "--depth", 8, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)  # the default place, from rtk.pipeline
    assert "akamaster key layout" in result.stderr and "'module.' removed" in result.stderr
    assert "not checked on real images" in result.stderr
    assert_same_network(source, out)
    ckpt = checkpoint.read(out)
    assert ckpt["provenance"]["source"] == {
        "file": "aka.th", "sha256": sha256_file(path), "format": "akamaster",
        "container": "state_dict", "prefixes_removed": ["module."]}
    assert "unknown" in ckpt["split"] and ckpt["metrics"]["test_acc"] is None
    assert ckpt["normalization"]["mean"] == [0.4914, 0.4822, 0.4465]  # rtk's, as no --mean was given
    assert checkpoint.build_model(ckpt).bn1.num_batches_tracked.item() == 7


def test_renamed_plain_state_dict_maps_by_structure(tmp_path, monkeypatch):
    """Another project's names, the legacy (pre-1.6) serialization, CUDA tags: mapped by order and shape."""
    _no_data(monkeypatch, tmp_path)
    source = AkaResNet(14).eval()
    path = save_as_on_cuda(renamed(source.state_dict()), tmp_path / "plain.pth", monkeypatch,
                           _use_new_zipfile_serialization=False)
    out = tmp_path / "c.pt"
    result = invoke(path, "--depth", 14, "--out", out)
    assert result.exit_code == 0, result.output
    assert "by structure" in result.stderr
    assert_same_network(source, out)
    assert checkpoint.read(out)["provenance"]["source"]["format"] == "state-dict"


def test_rtk_layout_under_a_model_key_with_torch_compile_prefixes(tmp_path, monkeypatch):
    _no_data(monkeypatch, tmp_path)
    from rtk.model import ResNet

    net = ResNet(8).eval()
    compiled = torch.compile(net)  # state_dict keys gain "_orig_mod."; nothing is compiled until called
    torch.save({"model": compiled.state_dict(), "acc": 0.9}, tmp_path / "compiled.pt")
    imported = importer.import_weights(tmp_path / "compiled.pt", tmp_path / "c.pt", depth=8, log=lambda m: None)
    assert (imported.layout, imported.container, imported.prefixes) == ("rtk", "model", ("_orig_mod.",))
    model, _ = checkpoint.load(imported.path)
    with torch.no_grad():
        assert torch.equal(model(_images()), net(_images()))  # same class, same arithmetic: bit for bit


def test_normalization_travels_to_the_onnx_and_the_runtime(tmp_path, monkeypatch):
    """--mean/--std are recorded, exported, applied by rtk.runtime to uint8 pixels, and handed to
    Triton clients (the C++ app reads the same metadata, through the engine's sidecar)."""
    _no_data(monkeypatch, tmp_path)
    from rtk import deploy, export, runtime
    from rtk.onnx_meta import read_metadata

    source, path = akamaster_file(tmp_path, monkeypatch)
    (mean, std), out = STATS, tmp_path / "c.pt"
    result = invoke(path, "--depth", 8, "--out", out, "--mean", ",".join(map(str, mean)),
                    "--std", ",".join(map(str, std)))
    assert result.exit_code == 0, result.output
    onnx_path = export.export_onnx(out, tmp_path / "m.onnx", num_images=8, log=lambda m: None)
    assert read_metadata(onnx_path)["normalization"]["mean"] == list(mean)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = source(x).numpy()
    with runtime.load(onnx_path, backend="onnxruntime") as model:
        np.testing.assert_allclose(model.logits(pixels), expected, rtol=0, atol=1e-4)
    folder = deploy.export_triton(onnx_path, tmp_path / "triton", kind="cpu", log=lambda m: None)
    assert f"mean = {list(mean)}, std = {list(std)}" in (folder / "config.pbtxt").read_text()
    readme = (folder / "README.md").read_text()  # its client example normalizes with this model's statistics
    assert f"'mean': {list(mean)}" in readme and "normalize_uint8_nhwc(images, normalization)" in readme


def test_near_chance_accuracy_is_warned_about(tmp_path, monkeypatch, fake_cifar_dir):
    """A data set is found (here a fake one: random images, so any model is at chance): the accuracy
    is printed with the split it was measured on, stored, and near chance comes with the usual causes."""
    _, path = akamaster_file(tmp_path, monkeypatch)
    result = invoke(path, "--depth", 8, "--out", tmp_path / "c.pt", "--data-dir", fake_cifar_dir)
    assert result.exit_code == 0, result.output
    assert re.search(r"test accuracy \d+\.\d\d% on the 20 CIFAR-10 test images \(the test set, not rtk's "
                     r"validation split", result.stderr), result.stderr
    warning = next(line for line in result.stderr.splitlines() if line.startswith("warning:"))
    for cause in ("normalization", "channel order", "only on one side"):
        assert cause in warning
    metrics = checkpoint.read(tmp_path / "c.pt")["metrics"]
    assert metrics["test_images"] == 20 and 0 <= metrics["test_acc"] <= 100


# ---------------------------------------------------------------------------------------------
# Refusals: one line each, nothing written


def test_option_b_is_refused_with_the_reason(tmp_path, monkeypatch):
    model, path = akamaster_file(tmp_path, monkeypatch, depth=20, option="B")
    assert sum(p.numel() for p in model.parameters()) == 272_474  # the figure the message quotes
    assert_refused(invoke(path, "--depth", 20, "--out", tmp_path / "c.pt"),
                   "option-B", "1x1 projection shortcuts", "layer2.0.shortcut.0.weight", "272,474 parameters")
    assert not (tmp_path / "c.pt").exists()


def test_wrong_depth_names_the_depth_the_file_fits(tmp_path, monkeypatch):
    _, path = akamaster_file(tmp_path, monkeypatch, depth=14)
    assert_refused(invoke(path, "--depth", 20, "--out", tmp_path / "c.pt"),
                   "holds a ResNet-14 (13 3x3 convolutions), not ResNet-20: pass --depth 14")
    sd = AkaResNet(8).state_dict()
    del sd["layer3.0.conv2.weight"]  # 6 3x3 convolutions: no depth fits
    torch.save(sd, tmp_path / "odd.pt")
    assert_refused(invoke(tmp_path / "odd.pt", "--depth", 8, "--out", tmp_path / "c.pt"),
                   "has 6 3x3 convolutions, where ResNet-8 has 7; no CIFAR ResNet (depth 6n+2) has 6")


def test_truncated_file_is_refused(tmp_path, monkeypatch):
    _, path = akamaster_file(tmp_path, monkeypatch)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_refused(invoke(path, "--depth", 8, "--out", tmp_path / "c.pt"), "corrupt or truncated")


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": AkaResNet(8).state_dict(), "args": Payload()}, tmp_path / "evil.th")
    line = assert_refused(invoke(tmp_path / "evil.th", "--depth", 8, "--out", tmp_path / "c.pt"),
                          "contains pickled code or Python objects (", "open) that rtk does not load")
    assert "weights_only=False" not in line and not marker.exists()


def test_existing_output_is_kept_without_force(tmp_path, monkeypatch):
    _no_data(monkeypatch, tmp_path)
    _, path = akamaster_file(tmp_path, monkeypatch)
    out = tmp_path / "c.pt"
    out.write_bytes(b"keep me")
    assert_refused(invoke(path, "--depth", 8, "--out", out), f"{out} exists: pass --force")
    assert out.read_bytes() == b"keep me"
    assert invoke(path, "--depth", 8, "--out", out, "--force").exit_code == 0
    assert checkpoint.read(out)["model"]["depth"] == 8
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("edit, fragments", [
    # the last tensor gone: "missing", naming rtk's tensor that has nothing
    (lambda sd: dict(list(sd.items())[:-1]), ("ends after", "nothing for rtk's fc.bias [10]", "1 missing")),
    # one more tensor (a classifier of another project's head): "extra", naming it
    (lambda sd: {**sd, "head2.weight": torch.zeros(10, 64)}, ("head2.weight [10, 64]", "1 extra")),
    # the stem conv moved to the end: the first tensor that does not fit is named with its place
    (lambda sd: dict(sorted(sd.items(), key=lambda kv: kv[0] == "stem.conv.weight")),
     ("tensor #1, stem.norm.weight [16], is where rtk has conv1.weight [16, 3, 3, 3]",)),
    # BN vectors whose names do not say weight/bias/running_mean/running_var: ambiguous
    (lambda sd: {f"p{i}": v for i, v in enumerate(sd.values())}, ("ambiguous", "p1 [16]", "bn1.weight")),
])
def test_structure_refuses_missing_extra_misplaced_and_ambiguous(tmp_path, edit, fragments):
    torch.save(edit(renamed(AkaResNet(8).state_dict())), tmp_path / "plain.pt")
    assert_refused(invoke(tmp_path / "plain.pt", "--depth", 8, "--out", tmp_path / "c.pt"), *fragments)


def test_names_sorted_as_text_are_ambiguous(tmp_path):
    """ResNet-68 has 11 blocks a stage: sorted as text, block 10 comes before block 2, and blocks
    of one shape would swap silently if order were trusted."""
    sd = renamed(AkaResNet(68).state_dict())
    torch.save(dict(sorted(sd.items())), tmp_path / "sorted.pt")
    assert_refused(invoke(tmp_path / "sorted.pt", "--depth", 68, "--out", tmp_path / "c.pt"),
                   "ambiguous", "body.1.10.norm_2.weight comes before body.1.2.conv_1.weight",
                   "sorted by name as text")


def test_explicit_format_that_does_not_match_is_refused(tmp_path):
    torch.save(renamed(AkaResNet(8).state_dict()), tmp_path / "plain.pt")
    assert_refused(invoke(tmp_path / "plain.pt", "--depth", 8, "--format", "akamaster", "--out", tmp_path / "c.pt"),
                   "not in the akamaster key layout: it has no conv1.weight")


@pytest.mark.parametrize("option, value, fragment", [
    ("--mean", "125.3,123.0,113.9", "divided by 255, e.g. [0.4914, 0.4824, 0.4467]"),
    ("--std", "0.2,0,0.2", "must be above 0"),
])
def test_bad_normalization_is_refused(tmp_path, monkeypatch, option, value, fragment):
    _, path = akamaster_file(tmp_path, monkeypatch)
    assert_refused(invoke(path, "--depth", 8, option, value, "--out", tmp_path / "c.pt"), fragment)


def test_no_state_dict_inside_and_rtk_checkpoints_are_refused(tmp_path):
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "x.pt")
    with pytest.raises(RtkError, match="holds no state dict.*'epoch', 'note'"):
        importer.read_state_dict(tmp_path / "x.pt")
    from rtk.model import ResNet

    own = checkpoint.save(tmp_path / "own.pt", ResNet(8), split={}, recipe={}, metrics={})
    with pytest.raises(RtkError, match="already an rtk checkpoint"):  # it keeps its own normalization
        importer.read_state_dict(own)


def test_statistics_that_are_no_variances_and_nan_logits_are_refused(tmp_path, monkeypatch, fake_cifar_dir):
    """One negative BN running_var made every logit NaN, printed as "test accuracy 10.00%" (argmax of NaN)."""
    sd = renamed(AkaResNet(8).state_dict())
    sd["body.2.0.norm_1.running_var"][3] = -0.5
    torch.save(sd, tmp_path / "negative.pt")
    assert_refused(invoke(tmp_path / "negative.pt", "--depth", 8, "--out", tmp_path / "c.pt"),
                   "body.2.0.norm_1.running_var is a BN running variance with values below 0 (-0.5)")
    # finite weights whose activations overflow float32: NaN logits, an error, not an accuracy
    sd = renamed(AkaResNet(8).state_dict())
    sd["stem.conv.weight"].fill_(3e38)
    torch.save(sd, tmp_path / "overflow.pt")
    line = fails_cleanly(invoke(tmp_path / "overflow.pt", "--depth", 8, "--out", tmp_path / "c.pt",
                                "--data-dir", fake_cifar_dir), "NaN or infinite logits for 20 of 20 images")
    assert "no accuracy" in line and not (tmp_path / "c.pt").exists()
    # a forged rtk checkpoint with such statistics: refused by every reader, naming the tensor
    from rtk.model import ResNet

    model = ResNet(8)
    model.bn1.running_var[0] = -1.0
    forged = checkpoint.save(tmp_path / "forged.pt", model, split={}, recipe={}, metrics={})
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(forged), "--no-verify", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1 and "bn1.running_var holds values below 0" in result.stderr, result.output


def test_a_float8_tensor_is_read_as_floats(tmp_path, monkeypatch):
    """torch.isfinite has no float8 kernel: it raised NotImplementedError, a traceback."""
    _no_data(monkeypatch, tmp_path)
    sd = renamed(AkaResNet(8).state_dict())
    sd["head.weight"] = sd["head.weight"].to(torch.float8_e4m3fn)
    torch.save(sd, tmp_path / "f8.pt")
    result = invoke(tmp_path / "f8.pt", "--depth", 8, "--out", tmp_path / "c.pt")
    assert result.exit_code == 0, result.output
    assert torch.equal(checkpoint.read(tmp_path / "c.pt")["state_dict"]["fc.weight"],
                       sd["head.weight"].to(torch.float32))


def test_an_entry_that_is_not_a_tensor_is_named(tmp_path):
    sd = renamed(AkaResNet(8).state_dict())
    sd["head.bias"] = [0.0] * 10  # a list where a tensor belongs
    torch.save(sd, tmp_path / "list.pt")
    assert_refused(invoke(tmp_path / "list.pt", "--depth", 8, "--out", tmp_path / "c.pt"),
                   "1 entries that are not tensors: 'head.bias' is a list")


def _zip_bomb(good: Path, bomb: Path, inflated: int) -> Path:
    """`good` (a torch.save zip) with its first tensor record replaced by `inflated` deflated zero bytes."""
    import zipfile

    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bomb, "w") as out:
        for record in source.infolist():
            if record.filename.endswith("/data/0"):
                out.writestr(record.filename, bytes(inflated), compress_type=zipfile.ZIP_DEFLATED)
            else:
                out.writestr(record, source.read(record.filename))
    return bomb


def test_a_checkpoint_zip_bomb_is_refused_before_torch_inflates_it(tmp_path, monkeypatch):
    """A small zip with one deflated storage of many MB (the report's: 2 MB -> 2 GiB): `rtk import` and
    `rtk info` inflated it all before refusing. Here 64 MiB, and torch.load never reads a record."""
    from rtk.model import ResNet

    torch.save(renamed(AkaResNet(8).state_dict()), tmp_path / "plain.pt")
    own = checkpoint.save(tmp_path / "own.pt", ResNet(8), split={}, recipe={}, metrics={})
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("map_location")) or real_load(*a, **k))
    for good, args in ((tmp_path / "plain.pt", ["import", "--depth", 8, "--out", tmp_path / "c.pt"]),
                       (own, ["info"])):
        bomb = _zip_bomb(good, tmp_path / f"bomb-{good.name}", 64 << 20)
        assert bomb.stat().st_size < 1 << 20
        result = CliRunner().invoke(main, [args[0], str(bomb), *map(str, args[1:])])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert re.search(r"declares 67,\d{3},\d{3} bytes of tensor data where its tensors hold", result.stderr), result.output
    assert "cpu" not in loads  # only the pickle was read ("meta": no record inflated)
    # an honest file of more than any ResNet-8 holds: refused before reading it too
    torch.save({**renamed(AkaResNet(8).state_dict()), "extra": torch.zeros(8 << 20)}, tmp_path / "big.pt")
    assert_refused(invoke(tmp_path / "big.pt", "--depth", 8, "--out", tmp_path / "c.pt"),
                   "more than any ResNet-8 checkpoint")
    assert "cpu" not in loads


# ---------------------------------------------------------------------------------------------
# Done when 2: an imported model goes through the later stages with the same figures


def test_imported_weights_export_and_quantize_as_rtk_own(tmp_path, monkeypatch, cifar10, cifar_dir):
    """rtk's own ResNet-8 and the same weights in akamaster layout (module. prefixes, CUDA tags),
    imported: the same ONNX graph and validation, the same INT8 model and accuracy figures on real
    test images (the first VALIDATE_IMAGES, for speed; docs/import.md has the full ResNet-20 run)."""
    from rtk import export, pipeline, quantize
    from rtk.quantize.validation import validate

    own = pipeline.run_paths(8, tmp_path / "own")
    make_readout_checkpoint(own.checkpoint, cifar10, depth=8)
    sd = {f"module.{re.sub(r'^stage', 'layer', re.sub(r'^fc[.]', 'linear.', k))}": v
          for k, v in checkpoint.read(own.checkpoint)["state_dict"].items()}
    source = save_as_on_cuda({"state_dict": sd, "best_prec1": 0.0}, tmp_path / "aka.th", monkeypatch)
    _no_data(monkeypatch, tmp_path)  # the accuracy check of rtk import is tested above
    imp = pipeline.run_paths(8, tmp_path / "imported")
    assert importer.import_weights(source, imp.checkpoint, depth=8, log=lambda m: None).layout == "akamaster"

    images, labels = cifar10.test_images[:VALIDATE_IMAGES], cifar10.test_labels[:VALIDATE_IMAGES]
    figures = {}
    for name, paths in (("own", own), ("imported", imp)):
        validations: list = []
        export.export_onnx(paths.checkpoint, paths.onnx, data_dir=cifar_dir, num_images=64,
                           log=lambda m: None, on_validation=validations.append)
        quantize.quantize_int8(paths.onnx, paths.int8_onnx("cpu"), target="cpu", data_dir=cifar_dir,
                               num_images=256, calib_dir=tmp_path / "calib", verify=False, log=lambda m: None)
        v = validations[0]
        figures[name] = {
            "onnx graph": _graph_bytes(paths.onnx), "int8 graph": _graph_bytes(paths.int8_onnx("cpu")),
            "validation": (v.passed, v.max_abs_diff, v.max_rel_diff, v.top1_agreement),
            "int8 figures": validate(paths.int8_onnx("cpu"), paths.onnx, images, labels),
        }
    assert figures["imported"] == figures["own"]
    assert figures["own"]["int8 figures"]["test_images"] == VALIDATE_IMAGES


def _graph_bytes(path: Path) -> bytes:
    import onnx

    return onnx.load(path).graph.SerializeToString()  # the network; metadata (checkpoint sha256) aside
