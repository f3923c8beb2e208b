"""The modelyard conformance suite: Ollama's REST API contract as data, run by a pytest plugin against a
modelyard backend (`--backend NAME`) or any Ollama-compatible server (`--base-url URL`).

- `cases/*.yaml`: the cases (schema in schema.py, check language in checks.py);
- `expectations/<backend>.yaml`: known gaps per backend, run as strict xfails;
- `coverage.yaml`: what of the reference is not covered yet, with its issue;
- `pytest_plugin.py`, `session.py`, `runner.py`: running them; `report.py`, `matrix.py`: results;
- `contract.py`: the response types every JSON body must decode through;
- `selfcheck.py`: the suite's checks of itself; `cli.py`: `modelyard conformance` and `modelyard-conformance`;
- `mutants.yaml` (schema and mutations in `mutants.py`), `proxy.py` (the mutating proxy) and `mutation.py`
  (`--mutation-score`): the suite's score against deviations from the API, one at a time.

It is its own distribution, `modelyard-conformance` (conformance/pyproject.toml), which needs no engine and
not modelyard itself unless it is asked to start a modelyard server (`--backend`) or to read a Modelfile
(`--create-from`). docs/conformance.md tells plugin authors and CI pipelines how to run it.
"""

__version__ = "0.1.0"
