"""Int8Linear against the fp32 linear it replaces: close, with the GELU fused in, and each sample quantized alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from worker.model.int8_linear import Int8Linear, int8_usable, quantize_sample

pytestmark = pytest.mark.skipif(not int8_usable(), reason="int8 multiplies need AVX-512 VNNI and oneDNN")


def linear(inputs: int, outputs: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(inputs, outputs)
    with torch.no_grad():
        layer.weight.normal_(0, 0.05)
        layer.bias.normal_(0, 0.1)
    return layer


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected).norm() / expected.norm())


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_it_computes_the_linear_within_int8_error(out_dtype: torch.dtype, activation: str) -> None:
    layer = linear(96, 160)
    x = torch.randn(3, 50, 96)
    expected = layer(x).detach()
    if activation == "gelu":
        expected = F.gelu(expected)
    got = Int8Linear(layer, "gelu" if activation == "gelu" else "none", out_dtype)(x.to(out_dtype))
    assert got.dtype == out_dtype and got.shape == (3, 50, 160)
    assert relative_error(got, expected) < 0.02
    # Rounding to 8 bits, not a wrong multiply: a layer of other weights is far off.
    assert relative_error(got, linear(96, 160, seed=1)(x).detach()) > 0.5


def test_each_sample_is_quantized_alone() -> None:
    # A sample of large values beside another would coarsen a shared scale; with one scale per sample the other's
    # result is exactly what it gets alone.
    layer = Int8Linear(linear(64, 32), "none", torch.float32)
    small, large = torch.randn(1, 20, 64), 1000 * torch.randn(1, 20, 64)
    together = layer(torch.cat([small, large, small]))
    assert torch.equal(together[0], layer(small)[0]) and torch.equal(together[2], layer(small)[0])


def test_quantizing_keeps_zero_exact_and_leaves_its_input_alone() -> None:
    x = torch.tensor([[-1.5, 0.0, 0.25, 3.0]])
    before = x.clone()
    quantized, scale, zero = quantize_sample(x)
    assert torch.equal(x, before)
    assert quantized.dtype == torch.uint8 and int(quantized[0, 1]) == zero
    assert torch.allclose(scale * (quantized.float() - zero), x, atol=scale / 2)
    zeros, _, zero = quantize_sample(torch.zeros(2, 3))
    assert torch.equal(zeros, torch.full((2, 3), zero, dtype=torch.uint8))
