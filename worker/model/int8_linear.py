"""Linear layers with int8 weights and 8-bit activations, on CPUs that multiply them in hardware (CAPTIONER_DTYPE=int8).

With AVX-512 VNNI, oneDNN multiplies uint8 activations by int8 weights faster than it multiplies bf16 (BENCHMARKS.md,
"Speed, round two"). Weights are quantized once, symmetric, one scale per output channel. Activations
are quantized as they arrive, one scale and zero point per sample (per image): a caption then never depends on the
images it shares a batch with, as it would with one scale for the whole input (ONNX Runtime's dynamic quantization).
The op is `onednn::qlinear_pointwise`, the one torch.compile's x86 int8 lowering emits.
Without VNNI, oneDNN's uint8 x int8 kernels can saturate their 16-bit sums, so `int8_usable` refuses those CPUs.
"""

from __future__ import annotations

import torch
from torch import nn

from worker.model.packed_linear import Activation


def int8_usable() -> bool:
    """True where Int8Linear runs in hardware: an x86 CPU with AVX-512 VNNI and a torch build with oneDNN's int8 ops."""
    return (
        torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        and torch.cpu._is_vnni_supported()
        and hasattr(torch.ops.onednn, "qlinear_pointwise")
        and hasattr(torch.ops.onednn, "qlinear_prepack")
    )


def quantize_sample(x: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """`x` as uint8 with one scale and zero point, chosen so that its whole range, and zero, are represented: the
    quantized values, the scale and the zero point (x ~ scale * (q - zero))."""
    low, high = torch.aminmax(x)
    low_value, high_value = min(float(low), 0.0), max(float(high), 0.0)
    scale = (high_value - low_value) / 255 or 1.0  # all zeros: any scale represents them
    zero = round(-low_value / scale)
    # `x.float()` is `x` itself when x is fp32: the first multiply makes the copy the in-place ops then work on.
    quantized = (x.float() * (1 / scale)).round_().add_(zero).clamp_(0, 255).to(torch.uint8)
    return quantized, scale, zero


class Int8Linear:
    """`y = act(x @ W.T + b)` for a frozen `nn.Linear`, int8 inside, `out_dtype` out; each `x[i]` quantized alone."""

    def __init__(self, linear: nn.Linear, activation: Activation, out_dtype: torch.dtype) -> None:
        weight = linear.weight.detach().float()
        self.weight_scale = weight.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127
        quantized = (weight / self.weight_scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)
        self.packed = torch.ops.onednn.qlinear_prepack(quantized, None)
        self.weight_zero = torch.zeros(weight.shape[0], dtype=torch.int64)
        self.bias = linear.bias.detach().float() if linear.bias is not None else None
        self.activation: Activation = activation
        self.out_dtype = out_dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: [samples, ..., in_features]. Callers that can pass one sample at a time save the stacking."""
        if x.shape[0] == 1:
            return self._sample(x[0]).unsqueeze(0)
        return torch.stack([self._sample(sample) for sample in x])

    def _sample(self, x: torch.Tensor) -> torch.Tensor:
        quantized, scale, zero = quantize_sample(x)
        # The GELU runs inside the multiply; "none" is its exact (erf) form, as BLIP's.
        post_op, algorithm = ("gelu", "none") if self.activation == "gelu" else ("none", "")
        out: torch.Tensor = torch.ops.onednn.qlinear_pointwise(
            quantized, scale, zero, self.packed, self.weight_scale, self.weight_zero, self.bias,
            1.0, 0, self.out_dtype, post_op, [], algorithm,
        )
        return out
