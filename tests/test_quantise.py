"""Int8 on top of low rank in one call: the factors become two nn.Linear holding exactly the same
function, and then every nn.Linear is quantised (weight-only by torchao, or PyTorch's dynamic)."""

import copy

import pytest
import torch
from torch import nn

from distil_rank.lowrank import LowRankLinear
from distil_rank.quantise import as_linears, quantise_int8


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(LowRankLinear(24, 40, 6), nn.GELU(), nn.Linear(40, 8),
                         LowRankLinear(8, 8, 2, bias=False))


def test_as_linears_is_the_same_function_in_two_linear_layers():
    dense, x = model(), torch.randn(50, 24, dtype=torch.float64)
    dense.double()
    with torch.no_grad():
        expected = dense(x)
        # written out by hand from the factors: x down^T up^T + bias
        first = dense[0]
        by_hand = x @ first.down.T @ first.up.T + first.bias
    split = as_linears(copy.deepcopy(dense))
    assert not any(isinstance(m, LowRankLinear) for m in split.modules())
    assert isinstance(split[0], nn.Sequential) and split[0][0].weight.shape == (6, 24)
    assert split[3][1].bias is None
    with torch.no_grad():
        torch.testing.assert_close(split(x), expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(split[0](x), by_hand, rtol=0, atol=1e-12)


def test_dynamic_int8_converts_the_factors_too():
    quantised = quantise_int8(model(), "dynamic")
    kinds = [type(m).__name__ for m in quantised.modules()]
    assert kinds.count("Linear") == 5  # the four factors and the dense layer, all int8 now
    assert not any(isinstance(m, (LowRankLinear, nn.Linear)) for m in quantised.modules())
    x = torch.randn(200, 24)
    with torch.no_grad():
        cosine = nn.functional.cosine_similarity(quantised(x), model()(x)).mean()
    assert cosine > 0.99


def test_weight_only_int8_rounds_each_output_channel_to_its_own_scale():
    """Every weight of every Linear (the factors included) lands within half a step of itself
    on a grid of its row's own: step max|row| / 127.5, int8 values; activations stay float."""
    pytest.importorskip("torchao")
    dense = model()
    quantised = quantise_int8(copy.deepcopy(dense), "weight_only")
    originals = [m.weight for m in as_linears(copy.deepcopy(dense)).modules()
                 if isinstance(m, nn.Linear)]
    stored = [m.weight for m in quantised.modules() if isinstance(m, nn.Linear)]
    assert len(stored) == len(originals) == 5  # two factors, a Linear, two factors
    for w, q in zip(originals, stored):
        step = w.detach().abs().amax(1, keepdim=True) / 127.5
        assert q.qdata.dtype == torch.int8
        torch.testing.assert_close(q.scale.reshape(-1, 1), step)
        error = (q.dequantize() - w.detach()).abs()
        assert bool((error <= step / 2 * (1 + 1e-4)).all())  # float32 rounding at a tie
        assert bool((error > 0).any())  # it did round
    x = torch.randn(200, 24)
    with torch.no_grad():
        cosine = nn.functional.cosine_similarity(quantised(x), dense(x)).mean()
    assert cosine > 0.999


def test_bad_calls_are_refused_in_one_line():
    with pytest.raises(ValueError, match="mode 'int4'"):
        quantise_int8(model(), "int4")
    with pytest.raises(TypeError, match="takes an nn.Module"):
        quantise_int8("model.safetensors")


@pytest.mark.parametrize("first, second", [("dynamic", "dynamic"), ("dynamic", "weight_only"),
                                           ("weight_only", "weight_only"),
                                           ("weight_only", "dynamic")])
def test_a_model_quantised_already_is_refused_in_one_line(first, second):
    """weight_only quantises in place, so a second call on the same model met torchao's own
    traceback (an int8 tensor has no aminmax); either mode on a quantised model is refused."""
    if "weight_only" in (first, second):
        pytest.importorskip("torchao")
    quantised = quantise_int8(model(), first)
    with pytest.raises(ValueError, match=r"already quantised \(5 int8 Linear layer\(s\), the "
                                         r"first '0\.0'\)"):
        quantise_int8(quantised, second)


def test_as_linears_keeps_a_layer_registered_under_two_names_one_layer():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = LowRankLinear(8, 8, 2)
            self.again = self.first

        def forward(self, x):
            return self.again(torch.relu(self.first(x)))

    torch.manual_seed(15)
    twice, x = Twice(), torch.randn(5, 8)
    with torch.no_grad():
        before = twice(x)
        as_linears(twice)
        assert isinstance(twice.first, nn.Sequential) and twice.again is twice.first
        torch.testing.assert_close(twice(x), before)
