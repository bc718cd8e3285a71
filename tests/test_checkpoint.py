import pytest
import torch

from rtk import checkpoint
from rtk.errors import RtkError
from rtk.model import ResNet


def _save(path, model=None, **kw):
    model = ResNet(20) if model is None else model
    return checkpoint.save(path, model, split={"seed": 0, "val_size": 5000}, recipe={"lr": 0.1},
                           metrics={"val_acc": 12.5}, **kw)


def test_load_rebuilds_the_model_from_the_file_alone(tmp_path):
    model = ResNet(32)
    with torch.no_grad():
        model.fc.bias.fill_(0.25)
    path = _save(tmp_path / "c.pt", model)
    loaded, ckpt = checkpoint.load(path)
    assert loaded.depth == 32 and not loaded.training
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert ckpt["normalization"]["mean"] == [0.4914, 0.4822, 0.4465]
    assert ckpt["classes"][0] == "airplane" and ckpt["split"]["val_size"] == 5000
    assert ckpt["provenance"]["packages"]["torch"]
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_wrapped_modules_are_saved_without_prefixes(tmp_path):
    compiled = torch.compile(ResNet(20))
    path = _save(tmp_path / "c.pt", compiled)
    keys = checkpoint.read(path)["state_dict"].keys()
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in keys)


def test_depth_mismatch_is_refused(tmp_path):
    path = _save(tmp_path / "c.pt")
    with pytest.raises(RtkError, match="ResNet-20, not ResNet-32"):
        checkpoint.load(path, depth=32)


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(RtkError, match="not found"):
        checkpoint.read(tmp_path / "missing.pt")
    good = _save(tmp_path / "c.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(RtkError, match="corrupt or truncated"):
        checkpoint.read(tmp_path / "trunc.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(RtkError, match="not an rtk checkpoint"):
        checkpoint.read(tmp_path / "foreign.pt")


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = _save(tmp_path / "c.pt")
    ckpt = checkpoint.read(path)
    ckpt["state_dict"].pop("fc.bias")
    with pytest.raises(RtkError, match="do not fit"):
        checkpoint.build_model(ckpt)


def test_loading_never_unpickles_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    ckpt = checkpoint.read(_save(tmp_path / "c.pt"))
    ckpt["recipe"] = Evil()
    torch.save(ckpt, tmp_path / "evil.pt")
    with pytest.raises(RtkError):
        checkpoint.read(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
