"""BLIP captioning: list of images in, list of captions out.

The model package knows nothing of HTTP, Celery or S3: it imports torch, transformers and Pillow, and of the
service only its plain-Python errors and version checks, so it can be benchmarked alone on a machine that has
just those. Its errors say which failures are the worker's own (faults.py).

The hot path is preprocess.py (pixels), fast_blip.py (forward passes) and generation.py (greedy and beam search);
options or models they do not cover go through transformers' generate(), which gives the same captions, slower.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, get_args

import torch
from transformers import BlipForConditionalGeneration, BlipProcessor
from transformers.utils import logging as transformers_logging

from common.errors import InferenceError, ModelLoadError
from worker.model.fast_blip import FastBlip, unsupported_reason
from worker.model.faults import device_failure
from worker.model.fit import HostImage, ModelImage
from worker.model.generation import DecodeOptions, SpecialTokens, generate, until_eos
from worker.model.int8_linear import int8_usable
from worker.model.output import Caption
from worker.model.preprocess import BlipPreprocessor

log = logging.getLogger(__name__)

DeviceChoice = Literal["auto", "cpu", "cuda"]
DtypeChoice = Literal["auto", "float32", "bfloat16", "float16", "int8"]
DTYPE_CHOICES: tuple[DtypeChoice, ...] = get_args(DtypeChoice)
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def transformers_logs_through_ours(progress_bars: bool) -> None:
    """transformers logs through a handler of its own, past the root's: send its lines through the root's instead, in
    the process's format, and leave its progress bars (loading the model) out where they are no lines (JSON logs)."""
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    if not progress_bars:
        transformers_logging.disable_progress_bar()


def set_torch_threads(threads: int) -> None:
    """Threads torch uses inside one model call on the CPU; 0 keeps torch's default, one per core."""
    if threads:
        torch.set_num_threads(threads)
    log.info("torch uses %d threads per model call on the CPU", torch.get_num_threads())


def pick_device(choice: DeviceChoice) -> torch.device:
    """CUDA when there is a GPU (or it is asked for), else the CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def cpu_computes_bf16() -> bool:
    """True on CPUs with bf16 arithmetic in hardware (AMX, or AVX-512 BF16) that oneDNN uses; elsewhere bf16 is
    emulated, slower than fp32."""
    hardware = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return bool(hardware and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pick_dtype(device: torch.device, choice: DtypeChoice = "auto") -> torch.dtype:
    """The model's dtype. "auto": fp16 on a GPU; on a CPU, bf16 where the CPU computes it in hardware, else fp32.
    Both reduced precisions give the trained tiny model's captions in fp32 on every image bench.model_path
    renders (its "reduced precision" section; BENCHMARKS.md). "int8": the dtype around the int8 multiplies, which
    is bf16 where the CPU computes it, else fp32.

    "auto" never picks int8: its captions agree with fp32 on the tiny model too, but a model of 64 hidden units says
    little about BLIP-base's activations, whose outliers are what int8 with one scale per image can lose."""
    if choice == "int8" or (choice == "auto" and device.type == "cpu"):
        return torch.bfloat16 if cpu_computes_bf16() else torch.float32
    return torch.float16 if choice == "auto" else DTYPES[choice]


class BlipCaptioner:
    """One loaded BLIP model. `caption()` is list-in, list-out, one caption per image."""

    def __init__(
        self,
        model: BlipForConditionalGeneration,
        processor: BlipProcessor,
        device: torch.device,
        dtype: torch.dtype,
        name: str,
        *,
        int8: bool = False,
    ) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.name = name
        reason = unsupported_reason(model)
        self.fast: FastBlip | None = None if reason else FastBlip(model, device, dtype, int8)
        if reason:
            log.warning("the fast path cannot run %s (%s): captioning through generate(), more slowly%s", name, reason,
                        f", in {dtype} without int8" if int8 else "")
        image_processor = processor.image_processor
        self.preprocessor: BlipPreprocessor | None = (
            BlipPreprocessor(image_processor, device, dtype) if BlipPreprocessor.matches(image_processor) else None
        )
        self._ahead_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        text_config: Any = model.config.text_config
        self.special = SpecialTokens(eos=text_config.sep_token_id)
        self.bos_token_id: int = text_config.bos_token_id
        self.positions: int | None = getattr(text_config, "max_position_embeddings", None)

    @classmethod
    def load(cls, name_or_path: str, device: DeviceChoice = "auto", dtype: DtypeChoice = "auto") -> BlipCaptioner:
        """Load with from_pretrained from a hub id or a local directory written by save_pretrained, on `device` in
        `dtype` (pick_dtype); ModelLoadError, with the fix, when it cannot be.

        Loading runs on a thread of its own, gone when it returns. Loading runs parallel work (copies, packing
        weights), and with GNU OpenMP, torch's on CPU, a thread that ran parallel work keeps a team of threads until
        it exits. While two teams exist on a machine with no more cores than one team has threads, libgomp stops
        its threads from spinning between parallel regions, and each of the thousands of small ops of a batch then
        waits for its threads to wake: the worker, loading on its main thread and captioning on its batching
        thread, ran every batch 15-40% slower than the same calls on the main thread (BENCHMARKS.md).
        """
        with ThreadPoolExecutor(1, thread_name_prefix="model-load") as loading:
            return loading.submit(cls._load, name_or_path, device, dtype).result()

    @classmethod
    def _load(cls, name_or_path: str, device: DeviceChoice, dtype: DtypeChoice) -> BlipCaptioner:
        torch_device = pick_device(device)
        torch_dtype = pick_dtype(torch_device, dtype)
        int8 = dtype == "int8"
        if int8 and (torch_device.type != "cpu" or not int8_usable()):
            raise ModelLoadError(
                f"CAPTIONER_DTYPE=int8 runs on a CPU with AVX-512 VNNI only, not on this {torch_device.type}.\n"
                "Fix: set CAPTIONER_DTYPE=auto (bf16 or fp32 on a CPU, fp16 on a GPU)."
            )
        try:
            processor = BlipProcessor.from_pretrained(name_or_path)
            model = BlipForConditionalGeneration.from_pretrained(name_or_path, dtype=torch_dtype)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"Could not load the BLIP model {name_or_path!r}: {exc}\n"
                "Fix: set CAPTIONER_MODEL to a local directory holding a model saved with save_pretrained, "
                "or download the model ahead of time on a machine that can reach the Hugging Face hub "
                f"(`hf download {name_or_path}`) and point HF_HOME at that cache."
            ) from exc
        # transformers types `to` through a decorator that mypy misreads.
        model = model.to(torch_device).eval()  # type: ignore[arg-type]
        log.info("loaded %s on %s (%s%s)", name_or_path, torch_device, torch_dtype, ", int8 multiplies" if int8 else "")
        return cls(model, processor, torch_device, torch_dtype, name_or_path, int8=int8)

    def caption(
        self,
        images: Sequence[ModelImage],
        prompt: str | None = None,
        generation: Mapping[str, int | float] | None = None,
        *,
        pixel_values: torch.Tensor | None = None,
    ) -> list[str]:
        """Caption a batch that shares one prompt and one set of generation options.

        `generation` holds generate() keyword arguments (max_new_tokens, num_beams, ...), already bounded
        by the caller; decoding is always deterministic. `pixel_values`, if given, is `self.pixel_values(images)`
        computed ahead, e.g. on another thread while the previous batch runs: on a GPU, stacking and uploading
        a batch of hundreds otherwise leaves the GPU idle while it is done.

        With a prompt, BLIP continues it and the caption starts with the prompt, as BLIP's own examples do.
        Batches must not mix prompts: prompts of different token lengths in one batch give wrong captions.
        """
        return [found.text for found in self.caption_counted(images, prompt, generation, pixel_values=pixel_values)]

    @torch.inference_mode()
    def caption_counted(
        self,
        images: Sequence[ModelImage],
        prompt: str | None = None,
        generation: Mapping[str, int | float] | None = None,
        *,
        pixel_values: torch.Tensor | None = None,
    ) -> list[Caption]:
        """caption(), with the tokens generated for each image (what the service counts as usage)."""
        if not images:
            return []
        options = DecodeOptions.parse(generation or {}, self.model.generation_config)
        self._check_room(prompt, int((generation or {}).get("max_new_tokens", 30)))
        try:
            if pixel_values is None:
                pixel_values = self.pixel_values(images)
            if self.fast is None or options is None:
                captions = self._caption_with_generate(images, prompt, generation, pixel_values)
            else:
                prompt_ids = self.prompt_ids(prompt)
                generated = generate(self.fast, self.fast.encode(pixel_values), prompt_ids, options, self.special)
                texts = self.processor.batch_decode([prompt_ids + ids for ids in generated], skip_special_tokens=True)
                captions = [Caption(text.strip(), len(ids)) for text, ids in zip(texts, generated, strict=True)]
        except RuntimeError as exc:
            if (failure := device_failure(exc, len(images))) is not None:
                raise failure from exc
            raise
        if len(captions) != len(images):
            # A silent mismatch would attach captions to the wrong images; fail the batch loudly instead.
            raise RuntimeError(f"model returned {len(captions)} captions for {len(images)} images")
        return captions

    @contextlib.contextmanager
    def preparing_ahead(self) -> Iterator[None]:
        """Where to prepare a batch while the model runs another (pixel_values, JPEGs decoded on the device): on a
        GPU, a CUDA stream of its own, so that the work overlaps the running batch rather than queueing behind it
        on the default stream, waited for on the preparing thread before the block ends."""
        stream = self._ahead_stream
        with torch.inference_mode(), (torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()):
            yield
        if stream is not None:
            stream.synchronize()

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(width, height) the model sees, for decoders that can decode less (JPEG draft mode); None if unknown."""
        if self.preprocessor is None:
            return None
        return self.preprocessor.width, self.preprocessor.height

    def prepare(self, image: HostImage) -> HostImage:
        """The image as the model will see it (RGB, resized). Thread-safe: decoding threads call it ahead of
        caption(), which then has no resizing left to do. Captions are the same with or without it."""
        return self.preprocessor.resized(image) if self.preprocessor is not None else image

    def pixel_values(self, images: Sequence[ModelImage]) -> torch.Tensor:
        """The model's input for `images`, on its device and in its dtype. Pixels already on the device (JPEGs
        decoded there) need the captioner's own preprocessing, which a model of fixed input size has."""
        if self.preprocessor is not None:
            return self.preprocessor.pixel_values(images)
        pixels = self.processor(images=_on_host(images), return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.dtype)

    def prompt_ids(self, prompt: str | None) -> list[int]:
        """The decoder's first tokens: BOS, then the prompt's tokens, as BLIP's generate() builds them."""
        if not prompt:
            return [self.bos_token_id]
        # The tokenizer wraps the prompt in [CLS] ... [SEP]; BLIP swaps [CLS] for BOS and drops [SEP].
        ids: list[int] = self.processor.tokenizer(prompt).input_ids
        return [self.bos_token_id, *ids[1:-1]]

    def _check_room(self, prompt: str | None, max_new_tokens: int) -> None:
        """InferenceError, before any work, when the prompt and the caption would pass the text decoder's positions:
        the model would fail on an index past them, and only once it got there. The API refuses such requests
        (common/prompts.py); this is for one whose API could not read the tokenizer."""
        used = len(self.prompt_ids(prompt))
        if self.positions is not None and used + max_new_tokens > self.positions:
            raise InferenceError(f"The prompt takes {used - 1} of the model's {self.positions} text positions, which "
                                 f"leaves no room for max_new_tokens={max_new_tokens}.")

    def _caption_with_generate(
        self, images: Sequence[ModelImage], prompt: str | None, generation: Mapping[str, int | float] | None,
        pixel_values: torch.Tensor | None = None,
    ) -> list[Caption]:
        """transformers' generate(), on `pixel_values` or else on what BLIP's own processor makes of `images`
        (as a hand-written transformers loop would: the tests' and the bench's reference)."""
        kwargs: dict[str, Any] = {"max_new_tokens": 30, **(generation or {}), "do_sample": False}
        if prompt:
            ids = self.processor.tokenizer([prompt] * len(images), return_tensors="pt")["input_ids"]
            kwargs["input_ids"] = ids.to(self.device)
        if pixel_values is None:
            pixels = self.processor(images=_on_host(images), return_tensors="pt")["pixel_values"]
            pixel_values = pixels.to(self.device, self.dtype)
        output_ids = self.model.generate(pixel_values=pixel_values, **kwargs)
        texts = self.processor.batch_decode(output_ids, skip_special_tokens=True)
        # Each row is the decoder's first tokens, then the new ones up to EOS, then padding.
        start = len(self.prompt_ids(prompt))
        new = [until_eos(row[start:], self.special.eos) for row in output_ids.tolist()]
        return [Caption(text.strip(), len(ids)) for text, ids in zip(texts, new, strict=True)]


def _on_host(images: Sequence[ModelImage]) -> list[HostImage]:
    on_host = [image for image in images if not isinstance(image, torch.Tensor)]
    if len(on_host) != len(images):
        raise ValueError("pixels on the device need the captioner's own preprocessing (a fixed input size)")
    return on_host
