"""BLIP captioning exported to ONNX and run by other CPU runtimes: ONNX Runtime and OpenVINO.

Neither optimum (optimum-onnx) nor optimum-intel exports BLIP for captioning (no "blip" in their export configs,
and their releases pin transformers below 5), so this exports it itself, as two graphs:

- the encoder: pixel_values -> every text-decoder layer's cross-attention keys and values over the image tokens.
  They depend on the image alone, so they are computed once per image, as our FastBlip does, not at every token;
- the step: one token per row, the self-attention cache so far and the cross-attention keys and values -> the
  next-token logits and the cache one token longer (concatenated, as optimum's decoder-with-past graphs do).

The modules are transformers' own (vision model, embeddings, output dense+norm blocks, feed-forward, LM head);
only the attention around the caches is written here, in transformers' order (matmul, divide by sqrt(head_dim),
softmax, matmul). Greedy decoding runs in numpy around the step graph, by worker/model/generation.py's rules:
EOS banned before min_new_tokens, stop once every row has ended. Captions have no prompt: BOS is the first token.

The legacy TorchScript exporter (dynamo=False, deprecated since torch 2.9) is used: it needs no onnxscript, and
traces these modules as they are. Needs the `bench` extra (onnxruntime, onnx, openvino, nncf).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn
from transformers import BlipForConditionalGeneration, BlipProcessor

from worker.model.fit import ModelImage
from worker.model.generation import until_eos
from worker.model.preprocess import BlipPreprocessor

OPSET = 17  # the first with LayerNormalization as one op, which both runtimes run fused

# OpenVINO's CPU modes: fp32, bf16 compute (INFERENCE_PRECISION_HINT), fp32 compute over nncf's int8 weights.
OpenVinoMode = Literal["fp32", "bf16", "int8 weights"]


def pairs(prefix: str, layers: int) -> list[str]:
    """Graph input or output names of per-layer keys and values: prefix_key.0, prefix_value.0, prefix_key.1, ..."""
    return [f"{prefix}_{kind}.{layer}" for layer in range(layers) for kind in ("key", "value")]


@dataclass(frozen=True)
class ExportedBlip:
    """The two graphs of one BLIP model, and what decoding with them needs."""

    model_dir: Path  # the processor: image preprocessing and the tokenizer
    encoder: Path
    step: Path
    layers: int
    heads: int
    head_dim: int
    bos: int
    eos: int
    dtype: type[np.floating[Any]] = np.float32  # of the graphs' floating-point inputs and outputs


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[rows, length, hidden] -> [rows, heads, length, head_dim]."""
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """[rows, 1, hidden] queries over [rows, heads, length, head_dim] keys and values, back to [rows, 1, hidden]:
    transformers' BLIP text attention, with no mask (a new token sees every token before it, and the image)."""
    scores = torch.matmul(_split_heads(query, keys.shape[1]), keys.transpose(-1, -2)) / scale
    return torch.matmul(scores.softmax(dim=-1), values).transpose(1, 2).flatten(2)


class _Encoder(nn.Module):
    """pixel_values -> (layer 0's cross-attention keys, its values, layer 1's keys, ...)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.vision = model.vision_model
        self.layers = model.text_decoder.bert.encoder.layer

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tokens = self.vision(pixel_values=pixel_values).last_hidden_state
        out: list[torch.Tensor] = []
        for layer in self.layers:
            cross = layer.crossattention.self
            heads = cross.num_attention_heads
            out += [_split_heads(cross.key(tokens), heads), _split_heads(cross.value(tokens), heads)]
        return tuple(out)


class _Step(nn.Module):
    """(input_ids [rows, 1], past keys and values per layer, cross keys and values per layer) ->
    (logits [rows, vocab], present keys and values per layer, one position longer)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.bert = model.text_decoder.bert
        self.head = model.text_decoder.cls.predictions
        text = model.config.text_config
        self.scale = math.sqrt(text.hidden_size // text.num_attention_heads)

    def forward(self, input_ids: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        layers = self.bert.encoder.layer
        past, image = caches[: 2 * len(layers)], caches[2 * len(layers) :]
        # The position is the past's length, traced as a shape: one graph serves every step.
        x = self.bert.embeddings(input_ids=input_ids, cache_length=past[0].shape[2])
        present: list[torch.Tensor] = []
        for index, layer in enumerate(layers):
            attention = layer.attention.self
            heads = attention.num_attention_heads
            keys = torch.cat([past[2 * index], _split_heads(attention.key(x), heads)], dim=2)
            values = torch.cat([past[2 * index + 1], _split_heads(attention.value(x), heads)], dim=2)
            present += [keys, values]
            x = layer.attention.output(_attend(attention.query(x), keys, values, self.scale), x)
            query = layer.crossattention.self.query(x)
            x = layer.crossattention.output(_attend(query, image[2 * index], image[2 * index + 1], self.scale), x)
            x = layer.output(layer.intermediate(x), x)
        return (self.head(x[:, -1]), *present)


def _to_onnx(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, names: tuple[list[str], list[str]],
             axes: Mapping[str, Mapping[int, str]]) -> None:
    """Trace `module` on `args` into an ONNX file; `names` are its inputs' and outputs' names."""
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter is deprecated, and says so at every export.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, args, str(path), input_names=names[0], output_names=names[1], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)


def export(model_dir: Path, out: Path, dtype: torch.dtype = torch.float32) -> ExportedBlip:
    """Export the BLIP captioning model saved in `model_dir` (save_pretrained) to ONNX graphs in `out`, computing
    in `dtype` throughout (fp16 graphs are ONNX Runtime's reduced precision on CPU)."""
    model: Any = BlipForConditionalGeneration.from_pretrained(str(model_dir), dtype=dtype).eval()
    text, vision = model.config.text_config, model.config.vision_config
    heads = text.num_attention_heads
    out.mkdir(parents=True, exist_ok=True)
    exported = ExportedBlip(model_dir, out / "encoder.onnx", out / "step.onnx", text.num_hidden_layers, heads,
                            text.hidden_size // heads, text.bos_token_id, text.sep_token_id,
                            torch.empty(0, dtype=dtype).numpy().dtype.type)
    cross_names = pairs("cross", exported.layers)
    past_names, present_names = pairs("past", exported.layers), pairs("present", exported.layers)
    rows: dict[int, str] = {0: "rows"}
    pixels = torch.zeros(2, 3, vision.image_size, vision.image_size, dtype=dtype)
    _to_onnx(_Encoder(model), (pixels,), exported.encoder, (["pixel_values"], cross_names),
             {name: rows for name in ["pixel_values", *cross_names]})
    with torch.no_grad():
        cross = _Encoder(model)(pixels)
    # Traced with 3 past positions; the past's length is a dynamic axis, from 0 at the first step.
    past = [torch.zeros(2, heads, 3, exported.head_dim, dtype=dtype)] * len(past_names)
    ids = torch.full((2, 1), exported.bos)
    _to_onnx(_Step(model), (ids, *past, *cross), exported.step,
             (["input_ids", *past_names, *cross_names], ["logits", *present_names]),
             {"input_ids": rows, "logits": rows, **{name: rows for name in cross_names},
              **{name: {0: "rows", 2: "past"} for name in past_names},
              **{name: {0: "rows", 2: "present"} for name in present_names}})
    return exported


def quantize_int8(exported: ExportedBlip, out: Path) -> ExportedBlip:
    """Both graphs with ONNX Runtime's dynamic quantization: int8 weights (per tensor), activations quantized to
    uint8 at run time with one scale per tensor, so for a whole batch at once: an image's caption can depend on the
    batch it is in. The multiplies are u8 x s8, what AVX512-VNNI runs natively."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.mkdir(parents=True, exist_ok=True)
    quantized = replace(exported, encoder=out / "encoder.onnx", step=out / "step.onnx")
    # It warns, per graph, that its pre-processing (shape inference, graph optimization) should run first: here that
    # made int8 no faster, and it takes three times as long as quantizing.
    logging.disable(logging.WARNING)
    try:
        for source, target in ((exported.encoder, quantized.encoder), (exported.step, quantized.step)):
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    return quantized


class Graphs(Protocol):
    """A runtime's sessions over the two graphs: feeds by input name in, outputs in the graph's order out."""

    def encode(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...

    def step(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


class OnnxRuntimeGraphs:
    """The graphs in ONNX Runtime's CPU execution provider, all graph optimizations on (its default)."""

    def __init__(self, exported: ExportedBlip, threads: int) -> None:
        import onnxruntime

        options: Any = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self._encoder: Any = onnxruntime.InferenceSession(str(exported.encoder), options,
                                                          providers=["CPUExecutionProvider"])
        self._step: Any = onnxruntime.InferenceSession(str(exported.step), options, providers=["CPUExecutionProvider"])

    def encode(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        outputs: list[np.ndarray] = self._encoder.run(None, dict(feeds))
        return outputs

    def step(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        outputs: list[np.ndarray] = self._step.run(None, dict(feeds))
        return outputs


def openvino_can(precision: str) -> bool:
    """Whether OpenVINO's CPU plugin computes in `precision` ("BF16", "INT8", ...) on this processor."""
    import openvino

    return precision in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_ir(exported: ExportedBlip, out: Path) -> ExportedBlip:
    """The graphs in OpenVINO's own format (IR), whose weights the CPU plugin maps from the file where it can use
    them as they are, rather than holding a copy (ENABLE_MMAP, its default for IR; with three modes of BLIP-base
    compiled, 2 GB less memory than from ONNX). Weights stay fp32 (save_model's default makes them fp16)."""
    import openvino

    out.mkdir(parents=True, exist_ok=True)
    ir = replace(exported, encoder=out / "encoder.xml", step=out / "step.xml")
    for source, target in ((exported.encoder, ir.encoder), (exported.step, ir.step)):
        openvino.save_model(openvino.Core().read_model(str(source)), str(target), compress_to_fp16=False)
    return ir


class OpenVinoGraphs:
    """The graphs (ONNX, or IR from openvino_ir) compiled by OpenVINO's CPU plugin, with its latency hint (one
    request uses every core).

    The precision is always set: on a CPU with bf16 instructions the plugin's default is bf16, not fp32.
    """

    def __init__(self, exported: ExportedBlip, mode: OpenVinoMode, threads: int) -> None:
        import openvino

        core: Any = openvino.Core()
        config = {"INFERENCE_PRECISION_HINT": "bf16" if mode == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": threads}
        self._encoder = self._compile(core, exported.encoder, mode, config)
        self._step = self._compile(core, exported.step, mode, config)

    @staticmethod
    def _compile(core: Any, path: Path, mode: OpenVinoMode, config: Mapping[str, object]) -> Any:
        """An inference request of the graph at `path`, its weights compressed first in "int8 weights" mode."""
        model = core.read_model(str(path))
        if mode == "int8 weights":
            import nncf

            nncf.set_log_level(logging.ERROR)  # else it prints a table of what it compressed, per graph
            # nncf's default: every MatMul's and embedding's weights to int8 (asymmetric, per output channel),
            # decompressed inside the plugin's kernels.
            model = nncf.compress_weights(model)
        return core.compile_model(model, "CPU", config).create_infer_request()

    def encode(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        # The cross-attention keys and values (680 MB for 16 images of BLIP-base) stay in the request's own buffers,
        # uncopied: only this batch's steps read them, all before the next batch's encoding overwrites them.
        return list(self._encoder.infer(dict(feeds), share_inputs=True, share_outputs=True).to_tuple())

    def step(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        # The inputs are read where numpy holds them (the keys and values above, uncopied at every step); the
        # outputs are copied, since the next step's inputs must not be buffers this request writes to.
        return list(self._step.infer(dict(feeds), share_inputs=True, share_outputs=False).to_tuple())


def greedy(graphs: Graphs, exported: ExportedBlip, pixel_values: np.ndarray, max_new_tokens: int,
           min_new_tokens: int = 0) -> list[list[int]]:
    """Each image's generated tokens, ending with EOS if it finished: the tokens of generation.py's greedy()."""
    rows, eos = pixel_values.shape[0], exported.eos
    pixels = pixel_values.astype(exported.dtype, copy=False)
    cross = dict(zip(pairs("cross", exported.layers), graphs.encode({"pixel_values": pixels}), strict=True))
    past = [np.zeros((rows, exported.heads, 0, exported.head_dim), exported.dtype)] * (2 * exported.layers)
    ids = np.full((rows, 1), exported.bos, np.int64)
    tokens = np.full((rows, max_new_tokens), eos, np.int64)
    finished = np.zeros(rows, bool)
    for new in range(max_new_tokens):
        logits, *past = graphs.step({"input_ids": ids, **dict(zip(pairs("past", exported.layers), past, strict=True)),
                                     **cross})
        logits = logits.astype(np.float32, copy=False)  # as generation.py scores in fp32
        if new < min_new_tokens:
            logits[:, eos] = -np.inf
        next_tokens = logits.argmax(axis=-1)
        tokens[:, new] = np.where(finished, eos, next_tokens)
        finished |= next_tokens == eos
        if finished.all():
            break
        ids = next_tokens[:, None]
    return [until_eos(row, eos) for row in tokens.tolist()]


class ExportedCaptioner:
    """Captions through a runtime's graphs, with BlipCaptioner's preprocessing and tokenizer: list in, list out."""

    def __init__(self, exported: ExportedBlip, graphs: Graphs) -> None:
        self.exported = exported
        self.graphs = graphs
        self.processor: Any = BlipProcessor.from_pretrained(str(exported.model_dir))
        image_processor = self.processor.image_processor
        if not BlipPreprocessor.matches(image_processor):
            raise ValueError(f"{exported.model_dir}: an image processor BlipPreprocessor does not reproduce")
        self.preprocessor = BlipPreprocessor(image_processor, torch.device("cpu"), torch.float32)

    def caption(self, images: Sequence[ModelImage], prompt: str | None = None,
                generation: Mapping[str, int] | None = None) -> list[str]:
        """Greedy captions, called as BlipCaptioner.caption; of `generation`, max_ and min_new_tokens count."""
        if prompt:
            raise ValueError("the exported step graph feeds one token at a time: captions without a prompt only")
        generation = generation or {}
        pixels = self.preprocessor.pixel_values(images).numpy()
        generated = greedy(self.graphs, self.exported, pixels, generation.get("max_new_tokens", 30),
                           generation.get("min_new_tokens", 0))
        # Decoded after BOS, as BlipCaptioner does, so that a BOS the tokenizer does not skip shows the same.
        texts = self.processor.batch_decode([[self.exported.bos, *ids] for ids in generated], skip_special_tokens=True)
        return [text.strip() for text in texts]
