#!/usr/bin/env bash
# The dependency floors: a fresh virtual environment holding the oldest releases pyproject.toml allows
# (.ci/floor-constraints.txt), the project installed without resolving again, then the whole suite. Not run by
# .ci/run (about 30 minutes on two cores, several GB of downloads). VENV: where to make it (default .venv-floor).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-floor}"
rm -rf "$VENV"
python3.11 -m venv "$VENV"
"$VENV/bin/pip" install -q --only-binary :all: -r .ci/floor-constraints.txt
"$VENV/bin/pip" install -q --no-deps -e .
MPLBACKEND=Agg "$VENV/bin/python" -m pytest -q -p no:cacheprovider -n 2 tests
