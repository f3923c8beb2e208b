"""Log probabilities of sampled tokens, from the logits llama.cpp computed for the step that sampled them.

They come from the full softmax over the raw logits (before penalties, grammar, top-k/top-p or temperature),
as llama-server's `n_probs` and Ollama's runner report them: a token's logprob says how likely the model
found it, not how likely the sampler was to draw it. Only requests that ask for logprobs pay for this
(one pass over the vocabulary per token); the others never read the logits.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from modelyard.plugin import TokenLogprob


class LogprobReader:
    """Turns one step's logits into the TokenLogprob of the sampled token, with `top` alternatives."""

    def __init__(self, n_vocab: int, piece: Callable[[int], bytes], top: int) -> None:
        import numpy  # a dependency of llama-cpp-python; imported only by requests that ask for logprobs

        self._numpy = numpy
        self._n_vocab = n_vocab
        self._piece = piece
        self._top = top
        self._scratch = numpy.empty(n_vocab, dtype=numpy.float32)  # reused every step: no allocation per token

    def read(self, logits: Any, token: int) -> TokenLogprob:
        """`logits`: a pointer to the step's n_vocab floats (llama_get_logits_ith); `token`: the one sampled."""
        np = self._numpy
        values = np.ctypeslib.as_array(ctypes.cast(logits, ctypes.POINTER(ctypes.c_float)), shape=(self._n_vocab,))
        highest = float(values.max())
        # log(sum(exp(x - max))): the exponents are <= 0, so float32 cannot overflow; the sum runs in float64.
        shifted = np.subtract(values, highest, out=self._scratch)
        normalizer = highest + float(np.log(np.exp(shifted, out=shifted).sum(dtype=np.float64)))
        alternatives: list[TokenLogprob] = []
        if self._top > 0:
            top = min(self._top, self._n_vocab)
            candidates = np.argpartition(values, -top)[-top:]
            # highest first; equal logits in token id order, so the list is stable from run to run
            ordered = sorted(candidates.tolist(), key=lambda index: (-float(values[index]), index))
            alternatives = [self._entry(index, float(values[index]) - normalizer) for index in ordered]
        return self._entry(token, float(values[token]) - normalizer, alternatives)

    def _entry(self, token: int, logprob: float, top: list[TokenLogprob] | None = None) -> TokenLogprob:
        piece = self._piece(token)
        # A piece that ends inside a UTF-8 character (a byte-fallback token) shows U+FFFD in `token`;
        # `bytes` keeps it exact, so the pieces of consecutive tokens join into the real text.
        return TokenLogprob(
            token=piece.decode("utf-8", errors="replace"), logprob=logprob, bytes=list(piece), top_logprobs=top or []
        )
