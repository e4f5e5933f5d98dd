"""Greedy and beam-search decoding over `FastBlip`, producing the tokens transformers' generate() produces.

generate() spends much of a CPU step on machinery this service never uses (generic cache objects, logits
processor lists, stopping-criteria lists, per-step input preparation). These loops do only the work that
changes the result, in the same floating-point order as transformers 5's `_sample` and `_beam_search`
(tests/unit/test_generation.py compares them token for token). Options they do not cover go to generate().
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch.nn import functional as F  # noqa: N812

from worker.model.fast_blip import GRAPH_MAX_ROWS, DecoderCache, FastBlip

log = logging.getLogger(__name__)

# Drop finished images from the batch once this share of its rows is done: dropping copies every remaining
# image's cached keys and values, so doing it for every single finished caption would cost more than it saves.
COMPACT_SHARE = 0.25

# generate() settings that change the result; the fast loops implement them only at these neutral values.
_NEUTRAL_GENERATION_CONFIG: dict[str, object] = {
    "length_penalty": 1.0, "early_stopping": False, "no_repeat_ngram_size": 0, "min_length": 0,
    "bad_words_ids": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None, "num_return_sequences": 1,
    "do_sample": False, "num_beam_groups": 1, "encoder_repetition_penalty": 1.0, "guidance_scale": None,
    "max_time": None, "stop_strings": None, "exponential_decay_length_penalty": None, "diversity_penalty": 0.0,
    "constraints": None, "force_words_ids": None, "renormalize_logits": False, "prompt_lookup_num_tokens": None,
    "assistant_model": None, "low_memory": None, "watermarking_config": None, "epsilon_cutoff": 0.0,
}


@dataclass(frozen=True)
class DecodeOptions:
    """The generation options the fast loops implement (common/schemas.py GenerationOptions)."""

    max_new_tokens: int = 30
    min_new_tokens: int = 0
    num_beams: int = 1
    repetition_penalty: float = 1.0

    @classmethod
    def parse(cls, generation: Mapping[str, int | float], generation_config: object) -> DecodeOptions | None:
        """The options, or None when generate() must run them (an unknown option or model default).

        An option the caller leaves out takes the model's default, as in generate(); max_new_tokens is always
        given by the captioner.
        """
        unknown = set(generation) - {"max_new_tokens", "min_new_tokens", "num_beams", "repetition_penalty"}
        if unknown - {"do_sample"} or generation.get("do_sample"):
            return None
        for name, neutral in _NEUTRAL_GENERATION_CONFIG.items():
            value = getattr(generation_config, name, None)
            if value is not None and value != neutral and not (neutral is None and value in ({}, [])):
                return None

        def option(name: str, default: float) -> float:
            value = generation.get(name, getattr(generation_config, name, None))
            return default if value is None else float(value)

        options = cls(
            max_new_tokens=int(option("max_new_tokens", cls.max_new_tokens)),
            min_new_tokens=int(option("min_new_tokens", 0)),
            num_beams=int(option("num_beams", 1)),
            repetition_penalty=option("repetition_penalty", 1.0),
        )
        if options.max_new_tokens < 1 or options.num_beams < 1 or options.repetition_penalty <= 0:
            return None
        return options


@dataclass(frozen=True)
class SpecialTokens:
    eos: int  # BLIP ends captions with [SEP]


def _penalize(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor: shrink the scores of every token already in the sequence."""
    if penalty == 1.0:
        return scores
    score = torch.gather(scores, 1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return scores.scatter(1, seen, score)


def _ban_eos(scores: torch.Tensor, eos: int) -> torch.Tensor:
    scores[:, eos] = -math.inf
    return scores


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


class _HostFlags:
    """A few device booleans, read by the host as late as possible.

    Reading a GPU value makes the host wait for the GPU to catch up. The loops queue the next model step before
    reading the flags of this one, so on a GPU the copy lands while that step runs and the GPU never idles
    waiting for the host; on CPU reading is free.
    """

    def __init__(self, *flags: torch.Tensor) -> None:
        stacked = torch.stack(flags)
        self.ready: torch.cuda.Event | None = None
        self.host = stacked
        if stacked.is_cuda:
            self.host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
            self.host.copy_(stacked, non_blocking=True)
            self.ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self.ready.record()

    def read(self) -> list[bool]:
        if self.ready is not None:
            self.ready.synchronize()
        return [bool(flag) for flag in self.host.tolist()]


class _StepGraph:
    """A CUDA graph of `FastBlip.step_at` over one cache: replaying it queues a whole decoding step at once.

    Captured on first use for a batch, replayed for each of its later steps; the inputs are copied into its
    own buffers and its logits buffer is overwritten by the next replay (every use of it is queued before).
    """

    def __init__(self, blip: FastBlip, cache: DecoderCache, ids: torch.Tensor, position: int) -> None:
        self.ids = ids.clone()
        self.position = torch.full((1,), position, dtype=torch.long, device=ids.device)
        # Warm up outside the capture (library handles and workspaces are made lazily), as torch's docs advise;
        # it writes this step's keys and values, which the replay writes again.
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            blip.step_at(cache, self.ids, self.position)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        # Captured directly rather than through `torch.cuda.graph`, which first synchronizes the device and empties
        # both memory caches, device and pinned host, on every capture (once per batch here): the next batch would
        # then allocate its activations and its pinned upload buffer (226 MB at 512 images) from the driver again.
        # thread_local: other threads may use the GPU meanwhile (the next batch's upload), which the default
        # ("global") mode would refuse.
        with torch.cuda.stream(stream):
            self.graph.capture_begin(capture_error_mode="thread_local")
            try:
                self.logits = blip.step_at(cache, self.ids, self.position)
            finally:
                self.graph.capture_end()
        torch.cuda.current_stream().wait_stream(stream)

    def __call__(self, ids: torch.Tensor, position: int) -> torch.Tensor:
        self.ids.copy_(ids)
        self.position.fill_(position)
        self.graph.replay()
        return self.logits


def can_capture(tensor: torch.Tensor) -> bool:
    """Whether steps over this tensor's device can be captured as CUDA graphs."""
    return tensor.is_cuda


class _SingleSteps:
    """Feeds one token per row at a position, the way `blip.step_mode` says (see FastBlip)."""

    def __init__(self, blip: FastBlip, cache: DecoderCache) -> None:
        self.blip = blip
        self.cache = cache
        self.graph: _StepGraph | None = None

    def __call__(self, ids: torch.Tensor, position: int) -> torch.Tensor:
        if position != self.cache.length:
            raise ValueError(f"step at position {position}, but the cache holds {self.cache.length} tokens")
        mode = self.blip.step_mode
        if mode == "auto":
            mode = "graph" if ids.shape[0] <= GRAPH_MAX_ROWS else "dynamic"
        if mode == "graph" and not can_capture(ids):
            mode = "static"  # what the graph would replay, run directly: CUDA graphs need a GPU
        if mode == "graph" and self.graph is None:
            try:
                self.graph = _StepGraph(self.blip, self.cache, ids, position)
            except RuntimeError as exc:
                # A GPU or torch build that cannot capture this step: carry on without graphs, for good.
                log.warning("capturing a decoding step as a CUDA graph failed (%s); decoding without graphs", exc)
                self.blip.step_mode = mode = "dynamic"
        if mode == "dynamic":
            return self.blip.step(self.cache, ids)
        if self.graph is not None:
            logits = self.graph(ids, position)
        else:
            logits = self.blip.step_at(self.cache, ids, torch.full((1,), position, device=ids.device))
        self.cache.length = position + 1
        return logits

    def cache_replaced(self) -> None:
        """`keep_images` made new cache tensors: the graph, which reads the old ones, must be captured again."""
        self.graph = None


def greedy(
    blip: FastBlip, image_tokens: torch.Tensor, prompt: list[int], options: DecodeOptions, special: SpecialTokens
) -> list[list[int]]:
    """Greedy decoding: each image's generated tokens (after the prompt), ending with EOS if it finished."""
    images, prompt_len = image_tokens.shape[0], len(prompt)
    device = image_tokens.device
    cache = blip.start(image_tokens, beams=1, max_len=prompt_len + options.max_new_tokens)
    tokens = torch.full((images, prompt_len + options.max_new_tokens), special.eos, dtype=torch.long, device=device)
    tokens[:, :prompt_len] = torch.tensor(prompt, dtype=torch.long, device=device)
    rows = torch.arange(images, device=device)  # the image of each row still in the batch
    finished = torch.zeros(images, dtype=torch.bool, device=device)  # per row
    logits = blip.step(cache, tokens[:, :prompt_len])
    steps = _SingleSteps(blip, cache)
    for new in range(options.max_new_tokens):
        column = prompt_len + new
        scores = _penalize(logits.float(), tokens[rows, :column], options.repetition_penalty)
        if new < options.min_new_tokens:
            scores = _ban_eos(scores, special.eos)
        next_tokens = scores.argmax(dim=-1)
        # Rows finished earlier but not yet dropped keep computing; what they produce is never kept.
        tokens[rows, column] = torch.where(finished, tokens[rows, column], next_tokens)
        finished = finished | (next_tokens == special.eos)
        if new + 1 == options.max_new_tokens:
            break
        flags = _HostFlags(finished.all(), finished.float().mean() >= COMPACT_SHARE)
        logits = steps(next_tokens[:, None], column)
        all_finished, compact = flags.read()
        if all_finished:
            break
        if compact:
            keep = torch.nonzero(~finished).flatten()
            blip.keep_images(cache, keep)
            steps.cache_replaced()
            rows, finished, logits = rows[keep], finished[keep], logits[keep]
    generated = tokens[:, prompt_len:].tolist()
    return [until_eos(row, special.eos) for row in generated]


@dataclass
class _Beams:
    """Beam-search state per image, as in transformers' `_beam_search` (shapes [images, beams, ...])."""

    running: torch.Tensor  # sequences being extended
    running_scores: torch.Tensor
    finished: torch.Tensor  # best completed sequences so far, best first
    finished_scores: torch.Tensor
    finished_done: torch.Tensor
    improvable: torch.Tensor  # [images, 1]: could a running beam still beat the worst finished one?

    @classmethod
    def start(cls, prompt: list[int], shape: tuple[int, int, int], fill: int, device: torch.device) -> _Beams:
        """[images, beams, max_length] sequences that start with the prompt; only the first beam is live."""
        images, beams, _ = shape
        running = torch.full(shape, fill, dtype=torch.long, device=device)
        running[:, :, : len(prompt)] = torch.tensor(prompt, dtype=torch.long, device=device)
        running_scores = torch.zeros((images, beams), dtype=torch.float, device=device)
        running_scores[:, 1:] = -1e9  # only the first beam's continuations count at the first step
        return cls(running, running_scores, running.clone(), torch.full((images, beams), -1e9, device=device),
                   torch.zeros((images, beams), dtype=torch.bool, device=device),
                   torch.ones((images, 1), dtype=torch.bool, device=device))

    def select(self, keep: torch.Tensor) -> _Beams:
        return _Beams(*(t[keep] for t in (self.running, self.running_scores, self.finished, self.finished_scores,
                                           self.finished_done, self.improvable)))

    def advance(self, log_probs: torch.Tensor, cur_len: int, prompt_len: int, eos: int) -> tuple[torch.Tensor, ...]:
        """One step of transformers' `_beam_search` from processed log-probs [images, beams, vocab].

        Returns each new running beam's parent beam [images, beams] and whether each image is final [images].
        """
        images, beams, vocab = log_probs.shape
        max_length = self.running.shape[2]
        # The top 2 * beams candidates always hold `beams` that did not just end (there is one EOS token).
        top_scores, top_indices = torch.topk((log_probs + self.running_scores[:, :, None]).view(images, -1), 2 * beams)
        parents = top_indices // vocab
        candidates = torch.take_along_dim(self.running, parents[:, :, None], dim=1)
        candidates[:, :, cur_len] = top_indices % vocab
        hits = (candidates[:, :, cur_len] == eos) | (cur_len + 1 >= max_length)

        # Continue with the best `beams` candidates that did not finish.
        continuing = top_scores + hits.to(torch.float32) * -1.0e9
        chosen = torch.topk(continuing, k=beams)[1]
        self.running = torch.take_along_dim(candidates, chosen[:, :, None], dim=1)
        self.running_scores = torch.take_along_dim(continuing, chosen, dim=1)

        # Keep the best `beams` finished sequences, old and new (length penalty 1.0: divide by the length).
        just_finished = hits & (torch.arange(2 * beams, device=hits.device) < beams)[None, :]
        finished_scores = top_scores / ((cur_len + 1 - prompt_len) ** 1.0)
        finished_scores += (~self.improvable).to(torch.float32) * -1.0e9
        finished_scores += (~just_finished) * -1.0e9
        merged_scores = torch.cat((self.finished_scores, finished_scores), dim=1)
        best = torch.topk(merged_scores, k=beams)[1]
        self.finished = torch.take_along_dim(torch.cat((self.finished, candidates), dim=1), best[:, :, None], 1)
        self.finished_scores = torch.take_along_dim(merged_scores, best, dim=1)
        self.finished_done = torch.take_along_dim(torch.cat((self.finished_done, just_finished), 1), best, 1)

        # early_stopping=False: stop once the best running beam, at its current length, cannot win.
        best_running = self.running_scores[:, :1] / ((cur_len + 1 - prompt_len) ** 1.0)
        worst_finished = torch.where(
            self.finished_done, torch.min(self.finished_scores, dim=1, keepdim=True)[0], -1.0e9
        )
        self.improvable = self.improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
        return torch.take_along_dim(parents, chosen, dim=1), ~self.improvable[:, 0] | hits.all(dim=1)


def beam_search(
    blip: FastBlip, image_tokens: torch.Tensor, prompt: list[int], options: DecodeOptions, special: SpecialTokens
) -> list[list[int]]:
    """Beam search with transformers' defaults (length_penalty 1.0, early_stopping False); tokens as greedy()."""
    images, beams, prompt_len = image_tokens.shape[0], options.num_beams, len(prompt)
    device = image_tokens.device
    max_length = prompt_len + options.max_new_tokens
    # Unfilled positions hold EOS, as in transformers (its fill value is EOS when the pad id is 0).
    state = _Beams.start(prompt, (images, beams, max_length), special.eos, device)
    image_index = torch.arange(images, device=device)  # the image of each entry still in the batch
    results: dict[int, list[int]] = {}
    cache = blip.start(image_tokens, beams=beams, max_len=max_length)
    logits = blip.step(cache, state.running.view(images * beams, -1)[:, :prompt_len])
    steps = _SingleSteps(blip, cache)
    for cur_len in range(prompt_len, max_length):
        live = state.running.shape[0]
        log_probs = F.log_softmax(logits.float(), dim=-1)
        log_probs = _penalize(log_probs, state.running.view(live * beams, -1)[:, :cur_len],
                              options.repetition_penalty)
        if cur_len - prompt_len < options.min_new_tokens:
            log_probs = _ban_eos(log_probs, special.eos)
        parents, done = state.advance(log_probs.view(live, beams, -1), cur_len, prompt_len, special.eos)
        if cur_len + 1 == max_length:
            break
        blip.reorder(cache, (parents + torch.arange(live, device=device)[:, None] * beams).flatten())
        flags = _HostFlags(done.all(), done.float().mean() >= COMPACT_SHARE)
        logits = steps(state.running.view(-1, max_length)[:, cur_len : cur_len + 1], cur_len)
        all_done, compact = flags.read()
        if all_done:
            break
        # An image that cannot improve is final: record it, and drop it from the batch now and then.
        if compact:
            for entry in torch.nonzero(done).flatten().tolist():
                results[int(image_index[entry])] = state.finished[entry, 0, prompt_len:].tolist()
            keep = torch.nonzero(~done).flatten()
            blip.keep_images(cache, keep)
            steps.cache_replaced()
            keep_rows = (keep[:, None] * beams + torch.arange(beams, device=device)).flatten()
            state, image_index, logits = state.select(keep), image_index[keep], logits[keep_rows]
    for entry, image in enumerate(image_index.tolist()):
        results[image] = state.finished[entry, 0, prompt_len:].tolist()
    return [until_eos(results[image], special.eos) for image in range(images)]


def generate(
    blip: FastBlip, image_tokens: torch.Tensor, prompt: list[int], options: DecodeOptions, special: SpecialTokens
) -> list[list[int]]:
    """Greedy or beam search, as generate() would choose for these options."""
    if options.num_beams == 1:
        return greedy(blip, image_tokens, prompt, options, special)
    return beam_search(blip, image_tokens, prompt, options, special)


__all__ = ["DecodeOptions", "DecoderCache", "SpecialTokens", "beam_search", "generate", "greedy", "until_eos"]
