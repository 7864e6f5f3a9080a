"""Token counts in the teacher's tokenizer (PAPER.md §2 Phase 3 measures lengths in teacher-tokenizer tokens)."""

from __future__ import annotations

import re
from functools import lru_cache

# The offline default is APPROXIMATE. It splits text into letter runs, single digits and single punctuation
# characters; a letter run of up to 7 letters counts as one token and each further 3 letters add one (long words
# break into several BPE pieces); a digit or punctuation character is one token (Qwen's BPE splits digits).
# Calibration: on three teacher-style English paragraphs (CIR, InfoSeek, OVEN; 47-58 words each) it gives 1.22,
# 1.30 and 1.34 tokens per whitespace word, matching the ~1.3 tokens per English word of GPT/Qwen-style BPE
# vocabularies (OpenAI's "1 token ~ 0.75 words"). Expect a few percent off either way on any given text; give
# the teacher tokenizer's name for exact counts.
APPROX_WORD_LETTERS = 7
APPROX_LETTERS_PER_EXTRA_TOKEN = 3
_PIECE = re.compile(r"[^\W\d_]+|\d|[^\w\s]|_")


def approx_count(text: str) -> int:
    """The approximate token count described above."""
    n = 0
    for m in _PIECE.finditer(text):
        piece = m.group(0)
        extra = len(piece) - APPROX_WORD_LETTERS
        n += 1 + (-(-extra // APPROX_LETTERS_PER_EXTRA_TOKEN) if extra > 0 and piece[0].isalpha() else 0)
    return n


class Tokenizer:
    """Counts tokens; built from a Hugging Face tokenizer name / local path, or None for the approximation.

    Pickles as its spec alone (Beam workers reload it from their own cache)."""

    def __init__(self, spec: str | None = None):
        self.spec = spec
        self._hf = None

    @classmethod
    def from_spec(cls, spec: str | None) -> Tokenizer:
        """Load now, so that a missing tokenizer fails at start-up with a clear message."""
        tok = cls(spec or None)
        if tok.spec is not None:
            tok._load()
        return tok

    @property
    def approximate(self) -> bool:
        return self.spec is None

    def _load(self):
        if self._hf is None:
            from transformers import AutoTokenizer

            try:
                self._hf = AutoTokenizer.from_pretrained(self.spec, local_files_only=True)
            except (OSError, ValueError) as e:
                raise ValueError(
                    f"teacher tokenizer {self.spec!r} is neither a local tokenizer folder nor in the Hugging Face "
                    f"cache (loading is offline): {e}"
                ) from e
        return self._hf

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self.spec is None:
            return approx_count(text)
        return len(self._load().encode(text, add_special_tokens=False))

    def __getstate__(self):
        return {"spec": self.spec}

    def __setstate__(self, state):
        self.spec, self._hf = state["spec"], None

    def __repr__(self) -> str:
        return f"Tokenizer({self.spec!r})"


@lru_cache(maxsize=8)
def get_tokenizer(spec: str | None) -> Tokenizer:
    """One loaded Tokenizer per spec per process."""
    return Tokenizer.from_spec(spec)
