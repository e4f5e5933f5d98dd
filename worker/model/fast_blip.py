"""BLIP's forward passes for captioning, rewritten for inference speed over the weights of a loaded model.

transformers' BLIP runs eager attention (matmul, softmax, matmul, with big intermediate tensors), recomputes
nothing it could share between beams (it copies each image's 577 encoder states once per beam and reorders
those copies at every beam step) and pays for generic generate() machinery at every step. Here:

- attention is `F.scaled_dot_product_attention` (a fused kernel on CPU and GPU);
- the decoder's cross-attention keys and values over the image tokens are computed once per image, for all 12
  layers in one matrix multiply, and shared by that image's beams (the beams are extra query rows);
- the self-attention cache is preallocated, so a step writes in place instead of concatenating;
- linears are oneDNN with prepacked weights on CPU (see worker/model/packed_linear.py), and with `int8` the vision
  encoder's and the cross-attention keys' and values' are int8 (worker/model/int8_linear.py);
- finished images can be dropped from the batch (`keep_images`).

Only the modules' weights are used, never their forward methods, so this depends on the checkpoint layout, not
on transformers' internal APIs; but its results must equal transformers' own, which a release could change: on a
transformers version it was not checked on (common/compat.py), `unsupported_reason` sends the captioner to
generate() instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from common.compat import unchecked_reason
from worker.model.int8_linear import Int8Linear
from worker.model.packed_linear import Activation, PackedLinear, onednn_usable

log = logging.getLogger(__name__)

# Decoder rows (images x beams) up to which `step_mode` "auto" replays CUDA graphs (see FastBlip.__init__).
GRAPH_MAX_ROWS = 512

StepMode = Literal["auto", "graph", "static", "dynamic"]

# A linear layer of this module: PackedLinear, or Int8Linear for the multiplies over image tokens.
Linear = Callable[[torch.Tensor], torch.Tensor]


def unsupported_reason(model: Any) -> str | None:
    """Why this module cannot run `model` exactly as transformers does, or None if it can."""
    if (unchecked := unchecked_reason("transformers")) is not None:
        return unchecked
    config = getattr(model, "config", None)
    vision = getattr(config, "vision_config", None)
    text = getattr(config, "text_config", None)
    if vision is None or text is None:
        return "not a BLIP model"
    if vision.hidden_act != "gelu" or text.hidden_act != "gelu":
        return "an activation other than exact GELU"
    if not text.is_decoder or text.encoder_hidden_size != vision.hidden_size:
        return "an unusual text decoder"
    if vision.hidden_size % vision.num_attention_heads or text.hidden_size % text.num_attention_heads:
        return "a hidden size not divisible by the number of heads"
    return None


@dataclass
class _VisionLayer:
    norm1: nn.LayerNorm
    qkv: Linear
    proj: Linear
    norm2: nn.LayerNorm
    fc1: Linear  # with GELU fused in
    fc2: Linear


@dataclass
class _TextLayer:
    qkv: PackedLinear  # self-attention query, key and value in one multiply
    self_out: PackedLinear
    norm1: nn.LayerNorm
    cross_q: PackedLinear
    cross_out: PackedLinear
    norm2: nn.LayerNorm
    ffn_in: PackedLinear  # with GELU fused in
    ffn_out: PackedLinear
    norm3: nn.LayerNorm


@dataclass
class DecoderCache:
    """Per-step state of one batch: image-major rows, `beams` rows per image."""

    self_kv: torch.Tensor  # [layers, 2, rows, heads, max_len, head_dim]
    cross_kv: torch.Tensor  # [layers, 2, images, heads, image_tokens, head_dim]
    beams: int
    length: int = 0  # tokens written so far


def _fuse(linears: list[nn.Linear]) -> nn.Linear:
    """One linear computing several linears over the same input: one large multiply beats several small ones."""
    fused = nn.Linear(linears[0].in_features, sum(lin.out_features for lin in linears))
    fused = fused.to(device=linears[0].weight.device, dtype=linears[0].weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([lin.weight for lin in linears]))
        fused.bias.copy_(torch.cat([lin.bias for lin in linears]))
    return fused


class FastBlip:
    """Vision encoder and text decoder of a `BlipForConditionalGeneration`, for inference only."""

    # `model` is a BlipForConditionalGeneration, typed Any: transformers' module attributes are untyped.
    def __init__(self, model: Any, device: torch.device, dtype: torch.dtype, int8: bool = False) -> None:
        """`int8`: the multiplies over image tokens (the vision encoder's, the cross-attention keys' and values') in
        int8 on CPU, `dtype` around them; the caller checks `int8_usable()` first."""
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"FastBlip cannot run this model: {reason}")
        prepack = onednn_usable(device, dtype)

        def lin(module: nn.Linear, activation: Activation = "none") -> PackedLinear:
            return PackedLinear(module, activation, prepack)

        # The decoder's steps keep PackedLinear: a step has one row per image, which int8 would quantize one row at a
        # time (to keep each caption its own), and the image tokens' multiplies are most of the work.
        def image_lin(module: nn.Linear, activation: Activation = "none") -> Linear:
            return Int8Linear(module, activation, dtype) if int8 else lin(module, activation)

        self.int8 = int8

        config = model.config
        vision = model.vision_model
        self.vision_heads: int = config.vision_config.num_attention_heads
        self.patch_embedding: nn.Conv2d = vision.embeddings.patch_embedding
        self.class_embedding = vision.embeddings.class_embedding.detach()
        self.position_embedding = vision.embeddings.position_embedding.detach()
        self.vision_layers = [
            _VisionLayer(layer.layer_norm1, image_lin(layer.self_attn.qkv), image_lin(layer.self_attn.projection),
                         layer.layer_norm2, image_lin(layer.mlp.fc1, "gelu"), image_lin(layer.mlp.fc2))
            for layer in vision.encoder.layers
        ]
        self.post_layernorm: nn.LayerNorm = vision.post_layernorm

        bert = model.text_decoder.bert
        head = model.text_decoder.cls.predictions
        self.text_heads: int = config.text_config.num_attention_heads
        self.hidden: int = config.text_config.hidden_size
        self.word_embeddings: nn.Embedding = bert.embeddings.word_embeddings
        self.position_embeddings: nn.Embedding = bert.embeddings.position_embeddings
        self.embedding_norm: nn.LayerNorm = bert.embeddings.LayerNorm
        self.text_layers = []
        cross_kv = []
        for layer in bert.encoder.layer:
            attn, cross = layer.attention, layer.crossattention
            self.text_layers.append(_TextLayer(
                lin(_fuse([attn.self.query, attn.self.key, attn.self.value])), lin(attn.output.dense),
                attn.output.LayerNorm, lin(cross.self.query), lin(cross.output.dense), cross.output.LayerNorm,
                lin(layer.intermediate.dense, "gelu"), lin(layer.output.dense), layer.output.LayerNorm,
            ))
            cross_kv += [cross.self.key, cross.self.value]
        self.cross_kv = image_lin(_fuse(cross_kv))
        self.head_transform = lin(head.transform.dense, "gelu")
        self.head_norm: nn.LayerNorm = head.transform.LayerNorm
        self.head_decoder = lin(head.decoder)
        self.device = device
        self.dtype = dtype
        # For a handful of queries per image, transformers' own eager order (matmul, scale, softmax, matmul) beat
        # the fused kernel on CPU; on a GPU the fused kernel reads each image's keys and values once, in one
        # launch instead of four (bench.model_path's "decode step" figures compare both).
        self.fused_cross_attention = device.type == "cuda"
        # How decoding feeds one token per row (worker/model/generation.py): "dynamic" runs `step` (attention over the
        # positions written so far); "static" runs `step_at` (the whole cache, later positions masked: the same
        # shapes at every step); "graph" replays a CUDA graph of `step_at`, captured once per batch; "auto" is
        # "graph" up to GRAPH_MAX_ROWS rows and "dynamic" above. A step launches ~300 small kernels, which a graph
        # replays at once: on an H200 that pays for small batches, where the launches set the pace, and not for
        # large ones, where the GPU's own work does (BENCHMARKS.md, "GPU model path, one H200"; small batches in
        # bench/results/2026-11-29-gpu-h200.md).
        self.step_mode: StepMode = "auto" if device.type == "cuda" else "dynamic"
        self._compiled_encoder: Callable[[torch.Tensor], torch.Tensor] | None = None  # see compile_encoder

    def compile_encoder(self) -> bool:
        """Run the vision encoder through torch.compile from now on; False, and eager kept, where it cannot.

        On an H200 (BLIP-base, fp16, large batches) inductor's fusion of the encoder's norms, GELUs and residual
        adds makes the whole model path a little faster, tokens identical (BENCHMARKS.md, "GPU model path, one
        H200"). Compiling takes seconds on the first batch, and once more on the first batch of another size,
        after which the batch dimension is dynamic (torch.compile's default). GPU only: the CPU encoder's oneDNN
        prepacked linears do not compile.
        """
        if self.device.type != "cuda":
            return False
        self._use_compiled_encoder(torch.compile(self.encode_eager))
        return True

    def _use_compiled_encoder(self, compiled: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Encode with `compiled`; if it ever fails (compiling happens at its first call, and needs, e.g., a C
        compiler for Triton's launchers), log why and run eager from then on: slower, never down."""

        def encode(pixel_values: torch.Tensor) -> torch.Tensor:
            try:
                return compiled(pixel_values)
            except torch.OutOfMemoryError:
                raise  # the batch's own problem: eager would run out as well
            except Exception:
                log.exception("the compiled vision encoder failed; encoding eager from now on")
                self._compiled_encoder = None
                return self.encode_eager(pixel_values)

        self._compiled_encoder = encode

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[images, 3, H, W] -> the image tokens the decoder attends to, [images, 1 + patches, hidden]."""
        if self._compiled_encoder is not None:
            return self._compiled_encoder(pixel_values)
        return self.encode_eager(pixel_values)

    def encode_eager(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`encode`, op by op; in int8, image by image, so that each multiply has one image's rows, which Int8Linear
        then quantizes without splitting and stacking."""
        if self.int8 and pixel_values.shape[0] > 1:
            return torch.cat([self.encode_eager(image) for image in torch.split(pixel_values, 1)])
        images = pixel_values.shape[0]
        x = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(images, 1, -1), x], dim=1)
        x = x + self.position_embedding[:, : x.shape[1]]
        tokens, hidden = x.shape[1], x.shape[2]
        heads = self.vision_heads
        for layer in self.vision_layers:
            qkv = layer.qkv(layer.norm1(x)).view(images, tokens, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
            attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
            x = layer.proj(attended.transpose(1, 2).reshape(images, tokens, hidden)) + x
            x = layer.fc2(layer.fc1(layer.norm2(x))) + x
        out: torch.Tensor = self.post_layernorm(x)
        return out

    def start(self, image_tokens: torch.Tensor, beams: int, max_len: int) -> DecoderCache:
        """A cache for `beams` rows per image, with every layer's cross-attention keys and values computed."""
        images = image_tokens.shape[0]
        heads, hidden, layers = self.text_heads, self.hidden, len(self.text_layers)
        head_dim = hidden // heads
        shape = (layers, 2, images * beams, heads, max_len, head_dim)
        # `step_at` reads the positions not yet written too (masked out), so they must hold numbers, not whatever
        # the memory held: a NaN there would survive the mask (0 * NaN is NaN).
        allocate = torch.empty if self.step_mode == "dynamic" else torch.zeros
        self_kv = allocate(shape, device=self.device, dtype=self.dtype)
        # One multiply for all layers, then one copy into per-layer contiguous blocks: every step reads all of
        # them, and strided reads used the memory bandwidth poorly on CPU (bench/results/2026-11-29-cpu-model-path.md).
        # In int8, one image per multiply, as in encode_eager.
        tokens = image_tokens.shape[1]
        cross_kv = torch.empty((layers, 2, images, heads, tokens, head_dim), device=self.device, dtype=self.dtype)
        first = 0
        for chunk in torch.split(image_tokens, 1 if self.int8 else images):
            computed = self.cross_kv(chunk).view(len(chunk), tokens, layers, 2, heads, head_dim)
            cross_kv[:, :, first : first + len(chunk)] = computed.permute(2, 3, 0, 4, 1, 5)
            first += len(chunk)
        return DecoderCache(self_kv, cross_kv, beams)

    def step(self, cache: DecoderCache, input_ids: torch.Tensor) -> torch.Tensor:
        """Feed [rows, new] tokens (the whole prompt first, then one at a time); return next-token logits."""
        rows, new = input_ids.shape
        start = cache.length
        if new > 1 and start:
            raise ValueError("only the first step may feed more than one token")
        heads, hidden = self.text_heads, self.hidden
        head_dim = hidden // heads
        positions = torch.arange(start, start + new, device=input_ids.device)
        x = self.embedding_norm(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        for index, layer in enumerate(self.text_layers):
            qkv = layer.qkv(x).view(rows, new, 3, heads, head_dim).transpose(1, 3)  # [rows, heads, 3, new, dim]
            cache.self_kv[index, :, :, :, start : start + new] = qkv[:, :, 1:].permute(2, 0, 1, 3, 4)
            keys = cache.self_kv[index, 0, :, :, : start + new]
            values = cache.self_kv[index, 1, :, :, : start + new]
            attended = F.scaled_dot_product_attention(qkv[:, :, 0], keys, values, is_causal=new > 1)
            x = layer.norm1(layer.self_out(attended.transpose(1, 2).reshape(rows, new, hidden)) + x)
            x = self._cross_attend_and_feed_forward(layer, cache.cross_kv[index], cache.beams, x)
        cache.length = start + new
        return self.head_decoder(self.head_norm(self.head_transform(x[:, -1])))

    def step_at(self, cache: DecoderCache, input_ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Feed one token per row ([rows, 1]) at `position` (a one-element tensor on the device, so that a CUDA
        graph of this call serves every step); return next-token logits. The same as `step` after `position`
        tokens: attention runs over the whole cache, with the positions not yet written masked out."""
        rows = input_ids.shape[0]
        heads, hidden = self.text_heads, self.hidden
        head_dim = hidden // heads
        max_len = cache.self_kv.shape[4]
        visible = (torch.arange(max_len, device=input_ids.device) <= position).view(1, 1, 1, max_len)
        x = self.embedding_norm(self.word_embeddings(input_ids) + self.position_embeddings(position))
        for index, layer in enumerate(self.text_layers):
            qkv = layer.qkv(x).view(rows, 1, 3, heads, head_dim).transpose(1, 3)  # [rows, heads, 3, 1, dim]
            cache.self_kv[index].index_copy_(3, position, qkv[:, :, 1:].permute(2, 0, 1, 3, 4))
            attended = F.scaled_dot_product_attention(
                qkv[:, :, 0], cache.self_kv[index, 0], cache.self_kv[index, 1], attn_mask=visible
            )
            x = layer.norm1(layer.self_out(attended.transpose(1, 2).reshape(rows, 1, hidden)) + x)
            x = self._cross_attend_and_feed_forward(layer, cache.cross_kv[index], cache.beams, x)
        return self.head_decoder(self.head_norm(self.head_transform(x[:, -1])))

    def _cross_attend_and_feed_forward(
        self, layer: _TextLayer, cross_kv: torch.Tensor, beams: int, x: torch.Tensor
    ) -> torch.Tensor:
        """The second half of a decoder layer: cross-attention over the image tokens, then the feed-forward.

        `cross_kv` is the layer's [2, images, heads, image_tokens, head_dim]; the beams of one image are extra
        query rows against that image's keys and values.
        """
        rows, new, hidden = x.shape
        images, heads, _, head_dim = cross_kv.shape[1:]
        query = layer.cross_q(x).view(images, beams * new, heads, head_dim).transpose(1, 2)
        if self.fused_cross_attention:
            attended = F.scaled_dot_product_attention(query, cross_kv[0], cross_kv[1])
        else:
            scores = torch.matmul(query, cross_kv[0].transpose(-1, -2)) / math.sqrt(head_dim)
            attended = torch.matmul(scores.softmax(dim=-1), cross_kv[1])
        x = layer.norm2(layer.cross_out(attended.transpose(1, 2).reshape(rows, new, hidden)) + x)
        out: torch.Tensor = layer.norm3(layer.ffn_out(layer.ffn_in(x)) + x)
        return out

    def reorder(self, cache: DecoderCache, rows: torch.Tensor) -> None:
        """Make row i continue from row rows[i] (beam search picked its parents)."""
        length = cache.length
        cache.self_kv[:, :, :, :, :length] = cache.self_kv[:, :, rows, :, :length]

    def keep_images(self, cache: DecoderCache, images: torch.Tensor) -> None:
        """Drop every image not in `images` (and its beams) so finished captions stop costing work."""
        rows = (images[:, None] * cache.beams + torch.arange(cache.beams, device=images.device)).flatten()
        cache.self_kv = cache.self_kv[:, :, rows]
        cache.cross_kv = cache.cross_kv[:, :, images]
