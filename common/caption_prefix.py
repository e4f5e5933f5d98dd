"""What a chat message's text means to BLIP, which continues a caption and follows no instructions.

People write to chat models "What is in this image?" or "Describe this photo." Continued as a caption's start,
such a text would give nonsense ("describe this photo. a dog on a beach"), so a question or an instruction asks
for the unconditional caption. A text that reads as a caption's start ("a photograph of", "a painting of") is
BLIP's prompt, as in the native API. `caption_prefix` (sent through the SDK's `extra_body`) sets the prompt
outright. tests/unit/test_openai_prefix.py holds the rule to a list of common phrasings.
"""

from __future__ import annotations

import re

# First words of questions and instructions; a caption's start is a noun phrase ("a", "an", "the", "two", ...).
_ASKING = frozenset((
    "what", "whats", "what's", "which", "who", "whom", "whose", "where", "when", "why", "how", "is", "are", "was",
    "were", "do", "does", "did", "can", "could", "would", "will", "shall", "should", "may", "might", "describe",
    "caption", "explain", "tell", "give", "write", "generate", "create", "provide", "summarize", "summarise",
    "list", "identify", "name", "show", "look", "see", "please", "analyze", "analyse", "detail", "characterize",
    "say", "help", "find", "count", "i", "i'm", "im", "you", "your", "let", "lets", "let's", "make", "produce",
    "output", "return", "answer", "classify", "label", "transcribe", "read", "compose",
))
_WORD = re.compile(r"[a-z']+")


def caption_prefix(text: str) -> str | None:
    """The prompt BLIP continues for this message text, or None for the unconditional caption."""
    stripped = text.strip()
    if not stripped or stripped.endswith("?") or stripped.endswith("!"):
        return None
    first = _WORD.match(stripped.lower())
    if first is None or first.group() in _ASKING:
        return None
    # A sentence that has ended ("A dog. Describe it.") is not a caption's start either.
    if re.search(r"[.;:]\s*$", stripped):
        return None
    return stripped
