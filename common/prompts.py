"""What a prompt may be, checked at the API's edge: not blank, no control characters, and short enough in the tokens of
the served model's own tokenizer, for jobs and bulk jobs alike.

The worker puts a prompt's tokens before the caption's in BLIP's text decoder, which has a fixed number of positions,
and every image of a batch pays for them; characters say little of that (one emoji or CJK character is a token, a
long word several). The API counts with the `tokenizers` package on the model's tokenizer.json (no torch, no
transformers), loaded once per process from CAPTIONER_MODEL: a local directory, or for a hub id the local Hugging
Face cache (the workers' model cache, shared). Where it cannot be loaded (a directory or cache only the workers
have), the API logs a warning at start and bounds prompts by characters alone; the worker still refuses, per
image, a prompt its model has no room for.
"""

from __future__ import annotations

import functools
import json
import logging
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from common.errors import ValidationFailed
from common.settings import Settings

log = logging.getLogger(__name__)

# Unicode's control characters (C0 with NUL, tab and newlines, DEL, C1) and lone surrogates, which are no text: a
# prompt is one line that the caption begins with, and these would only reach logs, webhooks and clients' screens.
_REFUSED_CATEGORIES = {"Cc": "control character", "Cs": "lone surrogate"}


@dataclass(frozen=True)
class ModelText:
    """The served model's tokenizer and its text decoder's positions, each None where it could not be read, and
    the positions an image takes in its vision encoder (its patches and the class token; 0 where unknown): what the
    OpenAI-compatible endpoints count as an image's prompt tokens."""

    tokenizer: Tokenizer | None
    positions: int | None
    image_tokens: int = 0

    def count(self, prompt: str) -> int | None:
        """The prompt's tokens as the worker feeds them (without [CLS] and [SEP]), or None without a tokenizer."""
        if self.tokenizer is None:
            return None
        return len(self.tokenizer.encode(prompt, add_special_tokens=False).ids)


@functools.cache
def model_text(model: str) -> ModelText:
    """The tokenizer and positions of CAPTIONER_MODEL, read once per process; a warning where they cannot be."""
    tokenizer, positions, image_tokens = None, None, 0
    try:
        tokenizer = _tokenizer(model)
        tokenizer.no_truncation()  # a truncating tokenizer.json would count a long prompt short
        tokenizer.no_padding()
        config = _model_file(model, "config.json")
        if config is not None:
            parsed = json.loads(config.read_text())
            positions = parsed.get("text_config", {}).get("max_position_embeddings")
            vision = parsed.get("vision_config", {})
            image_tokens = (int(vision.get("image_size", 384)) // int(vision.get("patch_size", 16))) ** 2 + 1
    except Exception as exc:  # a missing file, an unreachable hub, a malformed file: the same fallback for all
        log.warning("cannot read the tokenizer of %s (%s): prompts are bounded by characters only, and the worker "
                    "refuses, per image, one its model has no room for", model, exc)
    return ModelText(tokenizer, positions if isinstance(positions, int) else None, image_tokens)


def _tokenizer(model: str) -> Tokenizer:
    """tokenizer.json when the model has one (what transformers' fast tokenizer runs); else BERT's WordPiece on its
    vocab.txt, as BLIP's tokenizer is."""
    found = _model_file(model, "tokenizer.json")
    if found is not None:
        return Tokenizer.from_file(str(found))
    vocab = _model_file(model, "vocab.txt")
    if vocab is None:
        raise FileNotFoundError(f"{model} has neither tokenizer.json nor vocab.txt")
    config = _model_file(model, "tokenizer_config.json")
    lowercase = json.loads(config.read_text()).get("do_lower_case", True) if config is not None else True
    tokenizer = Tokenizer(models.WordPiece.from_file(str(vocab), unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=bool(lowercase))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def _model_file(model: str, name: str) -> Path | None:
    """A file of the model: in its directory, or for a hub id in the local Hugging Face cache (HF_HOME), never from
    the network: the API's start must not wait on the hub (unreachable, it retries for most of a minute)."""
    directory = Path(model)
    if directory.is_dir():
        path = directory / name
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(model, name, local_files_only=True))
    except EntryNotFoundError:  # LocalEntryNotFoundError too: not in the cache
        return None


def check_prompt(prompt: str | None, max_new_tokens: int, settings: Settings) -> int:
    """A prompt is optional, but not blank, without control characters, within CAPTIONER_MAX_PROMPT_CHARS and
    CAPTIONER_MAX_PROMPT_TOKENS, and with the caption's `max_new_tokens` within the model's positions. Its tokens
    (0 without a prompt, or where the tokenizer could not be read)."""
    text = model_text(settings.model)
    tokens = 0
    if prompt is not None:
        if not prompt.strip():
            raise ValidationFailed("prompt: must not be blank (omit it for unconditional captions).")
        if len(prompt) > settings.max_prompt_chars:
            raise ValidationFailed(f"prompt: longer than {settings.max_prompt_chars} characters.")
        for place, char in enumerate(prompt):
            kind = _REFUSED_CATEGORIES.get(unicodedata.category(char))
            if kind is not None:
                raise ValidationFailed(f"prompt: a {kind} (U+{ord(char):04X}) at character {place}; a prompt is "
                                       "one line of text.")
        tokens = text.count(prompt) or 0
        if tokens > settings.max_prompt_tokens:
            raise ValidationFailed(f"prompt: {tokens} tokens of the model's tokenizer; the limit is "
                                   f"{settings.max_prompt_tokens}.")
    # The decoder holds the caption's start token, the prompt's and up to max_new_tokens more.
    if text.positions is not None and 1 + tokens + max_new_tokens > text.positions:
        room = text.positions - 1 - tokens
        raise ValidationFailed(f"options.max_new_tokens: the model has room for {room} new tokens after this "
                               f"prompt's {tokens}, not {max_new_tokens}.")
    return tokens
