"""What the model gives for one image. Plain Python: the job code, which must not load torch, takes it in."""

from __future__ import annotations

from typing import NamedTuple


class Caption(NamedTuple):
    """One image's caption, and the tokens the decoder generated for it after the prompt, its end token included
    (what max_new_tokens bounds): the work usage counts."""

    text: str
    new_tokens: int
