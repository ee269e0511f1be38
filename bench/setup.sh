#!/usr/bin/env bash
# Creates bench/.venv-peers: the benchmark's own environment (Python >= 3.12) with the peers
# (slatedb, icechunk + zarr), matplotlib for the chart, and py-spy for the profiles.
# None of these are kvstore dependencies; kvstore itself runs from the project's .venv.
#
#   bash bench/setup.sh            # idempotent; redone when the pins below change
#
# Overrides: BENCH_PYTHON312 (interpreter for the venv; default python3.12 on PATH, else
# $(pyenv root)/versions/3.12.*).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV=.venv-peers
PINS=(
    'slatedb==0.17.*'
    'icechunk>=2,<3'
    'zarr>=3'
    'matplotlib'
    'py-spy'
)
PIP_FLAGS=(-qq --disable-pip-version-check --no-input)
say() { echo "bench/setup.sh: $*" >&2; }

find_python() {
    if [[ -n ${BENCH_PYTHON312:-} ]]; then echo "$BENCH_PYTHON312"; return; fi
    if command -v python3.12 >/dev/null 2>&1 && python3.12 -V >/dev/null 2>&1; then
        command -v python3.12; return
    fi
    if command -v pyenv >/dev/null 2>&1; then
        local root; root=$(pyenv root)
        local cand
        for cand in $(ls -d "$root"/versions/3.12.* 2>/dev/null | sort -V -r); do
            [[ -x $cand/bin/python ]] && { echo "$cand/bin/python"; return; }
        done
    fi
    echo ""
}

want="$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -d' ' -f1)"
if [[ -x $VENV/bin/python && -f $VENV/.bench-pins && $(<"$VENV/.bench-pins") == "$want" ]]; then
    exit 0
fi
py=$(find_python)
[[ -n $py ]] || { say "error: no Python 3.12 found (set BENCH_PYTHON312)"; exit 1; }
say "creating $VENV with $py"
"$py" -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" --upgrade pip
"$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" "${PINS[@]}"
printf '%s' "$want" >"$VENV/.bench-pins"
say "done: $("$VENV/bin/python" -m pip list 2>/dev/null | grep -i -E '^(slatedb|icechunk|zarr|matplotlib|py-spy) ' | tr -s ' ' | paste -sd, -)"
