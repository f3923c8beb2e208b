"""The bookkeeping of one generation, written once for every backend's token loop.

A backend's loop only drives its engine; `TokenLoop` does the rest: it caps the prompt to the context,
works out how many tokens may follow (num_predict and the room left), decodes token bytes as UTF-8
across token boundaries, holds back and cuts stop strings, counts tokens, times the first one, and
makes the final `Done` (which names the stop string that ended the answer, if one did). It is plain
synchronous code, so the same object serves a loop in a worker thread (`iterate_in_thread`), in an
engine process, or in an async generator:

    loop = TokenLoop(completion, context_length)
    prompt = loop.fit(tokenize(completion))          # BadRequest when it cannot fit
    for token in engine(prompt, max_new_tokens=loop.budget):    # skipped when loop.finished already
        if is_end_of_sequence(token):
            loop.end()
            break
        if text := loop.push(token, piece_of(token), logprob_of(token)):   # logprob: None unless asked
            yield from loop.deltas(text)                   # its Logprobs (if any), then the TextDelta
        if loop.finished:
            break
    for event in loop.finish():     # the held-back text, then Done
        yield event
"""

from __future__ import annotations

import codecs
import time

from modelyard.errors import BadRequest
from modelyard.runtime.contract import Completion, Done, Logprobs, TextDelta, TokenLogprob, fit_context
from modelyard.runtime.text import StopSequences

EMPTY_PROMPT = "the prompt is empty after tokenization"


class TokenLoop:
    """One generation's budget, stop strings, text decoding, counts and timings."""

    def __init__(self, completion: Completion, context_length: int) -> None:
        self.started = time.perf_counter_ns()  # the request reached the engine: prompt time counts from here
        self.completion = completion
        self.context_length = context_length
        self.prompt: list[int] = []
        self.output: list[int] = []  # generated tokens, end-of-sequence excluded
        self.budget = context_length  # tokens that may still be generated in all; set by `fit`
        self.reason = "stop"  # Done's reason: "length" once the budget ends the loop
        self.finished = False  # the loop must end: a stop string, the budget, an end of sequence
        self.first_token_at: int | None = None
        self._stops = StopSequences(completion.options.stop)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stopped = False  # a stop string was found: what follows it is dropped
        self._logprobs: list[TokenLogprob] = []  # of the tokens whose text is not shown yet

    def fit(self, tokens: list[int], *, keep: int | None = None, allow_empty: bool = False) -> list[int]:
        """The prompt tokens capped to the context (the first `keep`, num_keep by default, then the newest;
        Ollama's 400 with truncate false), which also sets the budget. An empty prompt is a 400 unless allowed."""
        options = self.completion.options
        keep = options.num_keep if keep is None else keep
        prompt = fit_context(tokens, self.context_length, keep, self.completion.truncate)
        if not prompt and not allow_empty:
            raise BadRequest(EMPTY_PROMPT)
        self.prompt = prompt
        room = self.context_length - len(prompt)
        self.budget = room if options.num_predict < 0 else min(options.num_predict, room)
        if self.budget <= 0:
            self.reason, self.finished = "length", True
        return prompt

    def push(self, token: int, piece: bytes | str, logprob: TokenLogprob | None = None) -> str:
        """Count one generated token and return the text that is safe to emit now ('' while a stop string
        or a UTF-8 sequence is incomplete). `piece` is the token's bytes, or its text when the engine's
        tokenizer decodes; `logprob` is kept until its text is shown (`deltas`). Afterwards `finished` says
        whether the loop must end."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter_ns()
        output = self.output
        output.append(token)
        if logprob is not None:
            self._logprobs.append(logprob)
        text, stopped = self._stops.push(self._decoder.decode(piece) if isinstance(piece, bytes) else piece)
        if stopped:
            self._stopped = self.finished = True
        elif len(output) >= self.budget:
            self.reason, self.finished = "length", True
        return text

    def deltas(self, text: str) -> list[Logprobs | TextDelta]:
        """The events that show `text` (what `push` returned): the log probabilities of the tokens it
        completes, when asked for, then the text."""
        if not self._logprobs:
            return [TextDelta(text)]
        logprobs, self._logprobs = Logprobs(self._logprobs), []
        return [logprobs, TextDelta(text)]

    def end(self) -> None:
        """The engine produced an end-of-sequence token (not counted, not shown): the loop ends."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter_ns()
        self.finished = True

    def finish(self) -> list[Logprobs | TextDelta | Done]:
        """The last events: the text still held back (unless a stop string cut it) with its tokens' log
        probabilities, then the Done. Tokens that only made up a cut stop string keep theirs to themselves."""
        events: list[Logprobs | TextDelta | Done] = []
        if not self._stopped:
            text, stopped = self._stops.push(self._decoder.decode(b"", final=True))
            tail = text if stopped else text + self._stops.flush()
            if tail:
                events.extend(self.deltas(tail))
        completion = self.completion
        events.append(
            Done.measured(
                self.reason,
                self.prompt,
                self.output,
                self.started,
                self.first_token_at,
                completion.want_context,
                stop_sequence=self._stops.matched,
            )
        )
        return events
