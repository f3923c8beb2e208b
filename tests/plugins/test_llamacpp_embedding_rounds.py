"""Concurrent embed calls on one llama.cpp embedding model share the engine's calls (embed.EmbeddingRounds).

The rounds are core-side scheduling, so a fake engine call stands in for llama.cpp: it records the inputs
of each round and blocks until the test lets it go. /api/embed with a real model is in tests/http."""

from __future__ import annotations

import asyncio
import threading

import pytest

from modelyard_llamacpp.embed import EmbeddingRounds


class FakeEngine:
    """An engine call that records each round's inputs and holds the first round until released."""

    def __init__(self, fail: bool = False) -> None:
        self.rounds: list[list[str]] = []
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, inputs: list[str]) -> list[list[float]]:
        self.rounds.append(inputs)
        self.release.wait(timeout=30)
        if self.fail:
            raise RuntimeError("engine failed")
        return [[float(len(text))] for text in inputs]


async def wait_for(condition, *, attempts: int = 500) -> None:
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def test_calls_that_arrive_during_a_round_share_the_next_one():
    engine = FakeEngine()

    async def scenario() -> list[list[list[float]]]:
        rounds = EmbeddingRounds(engine)
        first = asyncio.create_task(rounds.embed(["a"]))
        await wait_for(lambda: len(engine.rounds) == 1)  # the first round runs (held in the engine)
        later = [asyncio.create_task(rounds.embed(inputs)) for inputs in (["bb", "ccc"], ["dddd"], ["eeeee"])]
        await asyncio.sleep(0.05)
        engine.release.set()
        answers = await asyncio.gather(first, *later)
        await rounds.close()
        return answers

    answers = asyncio.run(scenario())
    assert engine.rounds == [["a"], ["bb", "ccc", "dddd", "eeeee"]]  # three calls, one engine call
    assert answers == [[[1.0]], [[2.0], [3.0]], [[4.0]], [[5.0]]]  # each call gets its own vectors back


def test_a_call_whose_client_left_is_left_out_of_its_round():
    engine = FakeEngine()

    async def scenario() -> list[list[float]]:
        rounds = EmbeddingRounds(engine)
        first = asyncio.create_task(rounds.embed(["a"]))
        await wait_for(lambda: len(engine.rounds) == 1)
        gone = asyncio.create_task(rounds.embed(["gone"]))
        kept = asyncio.create_task(rounds.embed(["kept"]))
        await asyncio.sleep(0.05)
        gone.cancel()
        engine.release.set()
        await first
        answer = await kept
        await rounds.close()
        return answer

    assert asyncio.run(scenario()) == [[4.0]]
    assert engine.rounds == [["a"], ["kept"]]


def test_a_failed_round_fails_its_calls_and_the_next_round_runs():
    engine = FakeEngine(fail=True)
    engine.release.set()

    async def scenario() -> list[list[float]]:
        rounds = EmbeddingRounds(engine)
        with pytest.raises(RuntimeError, match="engine failed"):
            await rounds.embed(["a"])
        engine.fail = False
        return await rounds.embed(["bb"])

    assert asyncio.run(scenario()) == [[2.0]]
