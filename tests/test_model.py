import pytest
import torch
from click.testing import CliRunner

from rtk.cli import main
from rtk.errors import RtkError
from rtk.model import ResNet, ShortcutA, blocks_per_stage, count_parameters, describe

# REFERENCE.md section 1: exact parameter counts (conv + BN + FC, option A) and forward MACs.
PAPER = {
    20: (269_722, 40.55),
    32: (464_154, 68.86),
    44: (658_586, 97.17),
    56: (853_018, 125.49),
    110: (1_727_962, 252.89),
    1202: (19_421_274, 2829.24),
}


@pytest.mark.parametrize("depth", sorted(PAPER))
def test_parameter_count_and_macs_match_the_paper(depth):
    params, macs_m = PAPER[depth]
    assert count_parameters(ResNet(depth)) == params
    rows = describe(depth)
    assert sum(r.params for r in rows) == params
    assert sum(r.macs for r in rows) / 1e6 == pytest.approx(macs_m, abs=0.01)


def test_forward_shape_and_batch_independence():
    model = ResNet(20).eval()
    x = torch.randn(5, 3, 32, 32)
    out = model(x)
    assert out.shape == (5, 10)
    torch.testing.assert_close(model(x[:1]), out[:1], atol=1e-5, rtol=1e-5)


def test_option_a_shortcut_is_parameter_free_subsample_and_zero_pad():
    model = ResNet(20)
    shortcuts = [m for m in model.modules() if isinstance(m, ShortcutA)]
    assert len(shortcuts) == 2  # one per stage transition, 16->32 and 32->64
    assert all(count_parameters(s) == 0 for s in shortcuts)
    sc = ShortcutA(16, 32, 2)
    x = torch.randn(2, 16, 32, 32)
    y = sc(x)
    assert y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])  # 8 zero channels before, 8 after
    assert not y[:, :8].any() and not y[:, 24:].any()
    assert "zero-pad" in repr(sc)


def test_he_initialisation_of_convs_uses_fan_in():
    torch.manual_seed(0)
    conv = ResNet(56).stage2[0].conv1  # 16 -> 32: fan_in = 16 * 9, fan_out = 32 * 9
    expected_std = (2.0 / (16 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)


@pytest.mark.parametrize("depth", [0, 7, 21, 33, -4])
def test_invalid_depth_is_a_clear_error(depth):
    with pytest.raises(RtkError, match="6n\\+2"):
        blocks_per_stage(depth)


def test_arch_command_prints_the_table():
    result = CliRunner().invoke(main, ["arch", "--depth", "56"])
    assert result.exit_code == 0, result.output
    assert "853,018" in result.output and "125.49M" in result.output
    assert "8x8" in result.output and "stage3" in result.output


def test_arch_rejects_a_bad_depth():
    result = CliRunner().invoke(main, ["arch", "--depth", "21"])
    assert result.exit_code == 2
    assert "6n+2" in result.output and "Traceback" not in result.output


def test_a_depth_beyond_the_bound_is_refused_at_once():
    """ResNet-600002 would build for minutes and end in a MemoryError; it is refused before anything
    is built, by the CLI (a usage error) and by the model itself."""
    result = CliRunner().invoke(main, ["arch", "--depth", "600002"])
    assert result.exit_code == 2 and "beyond rtk's bound of 6002" in result.output
    with pytest.raises(RtkError, match="beyond rtk's bound"):
        ResNet(600002)
    assert blocks_per_stage(6002) == 1000
