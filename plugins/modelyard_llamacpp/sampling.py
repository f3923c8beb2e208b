"""One request's sampler chain, built for a sequence of a batch.

The chain is the one llama-cpp-python's `Llama` builds for a single request (`Llama._init_sampler`):
penalties, the grammar of `format`, then greedy at temperature 0, or top-k, typical, top-p, min-p,
temperature and a seeded draw. A batched request therefore samples as it would alone; only its logits
can differ (llama.cpp's batched numerics, docs/performance.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelyard.plugin import Options

if TYPE_CHECKING:
    from modelyard_llamacpp.logprobs import LogprobReader


class SamplerChain:
    """A llama.cpp sampler chain owned by one sequence."""

    def __init__(self, lib: Any, sampler: Any) -> None:
        self._lib = lib
        self._sampler = sampler  # llama_cpp._internals.LlamaSampler
        self.logprobs: LogprobReader | None = None  # set when the request asks for log probabilities

    @classmethod
    def build(cls, lib: Any, model: Any, options: Options, *, seed: int, grammar: Any, n_ctx: int) -> SamplerChain:
        from llama_cpp._internals import LlamaSampler

        sampler = LlamaSampler()
        sampler.add_penalties(
            n_vocab=model.n_vocab(),
            penalty_last_n=n_ctx if options.repeat_last_n < 0 else options.repeat_last_n,
            penalty_repeat=options.repeat_penalty,
            penalty_freq=options.frequency_penalty,
            penalty_present=options.presence_penalty,
        )
        if grammar is not None:
            sampler.add_grammar(model, grammar)
        temperature = options.temperature
        if temperature < 0.0:
            sampler.add_dist(seed)
        elif temperature == 0.0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(options.top_k)
            sampler.add_typical(options.typical_p, 1)
            sampler.add_top_p(options.top_p, 1)
            sampler.add_min_p(options.min_p, 1)
            sampler.add_temp(temperature)
            sampler.add_dist(seed)
        return cls(lib, sampler)

    def sample_at(self, ctx: Any, index: int) -> int:
        """A token from the logits of batch row `index`; the chain accepts it (penalties, grammar)."""
        return int(self._lib.llama_sampler_sample(self._sampler.sampler, ctx, index))

    def free(self) -> None:
        self._sampler.close()
