#!/usr/bin/env bash
# One command for the test suite: ./scripts/test.sh [pytest args...]
#
# Idempotent setup of .venv and .localstack-venv (scripts/venvs.sh: needs Python >= 3.10,
# Python 3.13 for LocalStack, and PyPI the first time), then ruff (lint and format), mypy
# --strict, and pytest; the first failure ends the run.
# Overrides: KVSTORE_PYTHON (interpreter for .venv, default python3), KVSTORE_PYTHON313 (for
# .localstack-venv; default python3.13 on PATH, else the newest $(pyenv root)/versions/3.13.*).
# Exit code: the failing check's, else pytest's.  "No tests collected" (pytest exit 5) fails too.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/venvs.sh
source scripts/venvs.sh

setup_test_venv
setup_localstack_venv

# Static checks first (seconds): lint, format, types. Extra arguments go to pytest only.
say "ruff check, ruff format --check, mypy"
"$VENV/bin/ruff" check --quiet .
"$VENV/bin/ruff" format --check --quiet .
"$VENV/bin/mypy"

rc=0
"$VENV/bin/python" -m pytest "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    say "pytest collected no tests: failing"
fi
exit "$rc"
