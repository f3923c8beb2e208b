"""The modelyard conformance suite: Ollama's REST API contract as data, run by a pytest plugin against a
modelyard backend (`--backend NAME`) or any Ollama-compatible server (`--base-url URL`).

- `cases/*.yaml`: the cases (schema in schema.py, check language in checks.py);
- `expectations/<backend>.yaml`: known gaps per backend, run as strict xfails;
- `coverage.yaml`: what of the reference is not covered yet, with its issue;
- `pytest_plugin.py`, `session.py`, `runner.py`: running them; `report.py`, `matrix.py`: results;
- `selfcheck.py`: the suite's checks of itself; `cli.py`: `modelyard conformance`.

docs/conformance.md tells plugin authors and CI pipelines how to run it.
"""
