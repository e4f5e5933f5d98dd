"""Linear layers for inference: oneDNN with prepacked weights on CPU, the plain kernel elsewhere.

On CPU, torch's `F.linear` goes to MKL; oneDNN with its weights reordered once into its blocked layout runs the
same shapes much faster on the AMD EPYC workers here (bench/results/2026-11-29-cpu-model-path.md), in fp32
batch-invariant (a row's result does not depend on the other rows), which keeps batched captions equal to
one-at-a-time ones. In bf16, on CPUs that compute it, the same ops spare F.linear's copy of the bias into every
output and run the GELU inside the multiply. These are the ops torch.compile's CPU backend emits; they exist
since torch 2.0, and `PackedLinear` falls back to `F.linear` wherever they are missing or fail.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

log = logging.getLogger(__name__)

Activation = Literal["none", "gelu"]


def onednn_usable(device: torch.device, dtype: torch.dtype) -> bool:
    """True where prepacked oneDNN linears can run: fp32, or bf16 where oneDNN computes it, on a CPU build with
    oneDNN and its packing ops."""
    return (
        device.type == "cpu"
        and (dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()))
        and torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class PackedLinear:
    """`y = act(x @ W.T + b)` for a frozen `nn.Linear`, optionally with GELU (exact, erf) fused in."""

    def __init__(self, linear: nn.Linear, activation: Activation = "none", prepack: bool = False) -> None:
        self.weight = linear.weight.detach()
        self.bias = linear.bias.detach() if linear.bias is not None else None
        self.activation: Activation = activation
        self.packed: torch.Tensor | None = None
        if prepack:
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)
                probe = torch.zeros(2, self.weight.shape[1], dtype=self.weight.dtype)
                torch.ops.mkldnn._linear_pointwise(probe, packed, self.bias, "none", [], "")
                self.packed = packed
            except (RuntimeError, TypeError) as exc:  # an odd build: the plain kernel still works
                log.warning("oneDNN linear unavailable (%s); using F.linear", exc)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            if self.activation == "gelu":
                out = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "gelu", [], "none")
            else:
                out = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
            return out  # type: ignore[no-any-return]
        y = F.linear(x, self.weight, self.bias)
        return F.gelu(y) if self.activation == "gelu" else y
