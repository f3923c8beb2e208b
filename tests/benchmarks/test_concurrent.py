"""Concurrent streams (1, 2, 4, 8) on modelyard, llama-server, llama-cpp-python's server and raw llama-cpp-python
(one stream), under pytest-benchmark.

    uv run pytest tests/benchmarks/test_concurrent.py --benchmark-only -s

The same measurement as `concurrent_streams.py` (which also prints the markdown table of docs/performance.md).
The ratios of issue 11's "Done when" are printed, never asserted (the machine may be shared).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import concurrent_streams as bench  # noqa: E402  (next to this file)

from modelyard_llamacpp import default_threads  # noqa: E402

TOKENS = 64


@pytest.mark.parametrize("streams", [1, 2, 4, 8])
def test_concurrent_streams(benchmark, streams, tmp_path):
    engines = list(bench.ENGINES)  # raw llama-cpp-python runs at 1 stream only; engines not here are skipped
    results = benchmark.pedantic(
        lambda: bench.measure(engines, [streams], TOKENS, bench.Setup(default_threads())), rounds=1, iterations=1
    )
    print("\n" + bench.table(results))
    by_engine = {result.engine: result for result in results}
    ours = by_engine["modelyard"]
    assert ours.tokens > 0
    benchmark.extra_info.update({r.engine: r.__dict__ for r in results})
    if "llama-server" in by_engine:
        print(f"modelyard / llama-server aggregate: {ours.aggregate / by_engine['llama-server'].aggregate:.2f}")
    print(f"slowest / fastest stream: {ours.fairness:.2f}")
