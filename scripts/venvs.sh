# Sourced by scripts/test.sh and scripts/local-s3.sh (from the repository root): creates and
# updates the two venvs, idempotently.
#   .venv             python3 (>= 3.10) with `pip install -e '.[test]'`; redone only when
#                     pyproject.toml changes (marker .venv/.kvstore-installed).
#   .localstack-venv  Python 3.13 with the pinned LocalStack (no Docker) from
#                     shared/s3-conditional-requests.md; redone only when the pins change
#                     (marker .localstack-venv/.kvstore-pins).
# Overrides: KVSTORE_PYTHON (interpreter for .venv, default python3), KVSTORE_PYTHON313 (for
# .localstack-venv; default python3.13 on PATH, else the newest $(pyenv root)/versions/3.13.*).
# Both need network access to PyPI the first time.

VENV=.venv
LS_VENV=.localstack-venv
LS_PINS=(
    'localstack-core[base-runtime]==2026.3.0'
    'cbor2<6'
    'pyopenssl<24.3'
    'cryptography<44'
    'service_identity'
)
# -qq: errors only (this machine's pip.conf names two missing local indexes and -q still prints
# a warning per package for them)
PIP_FLAGS=(-qq --disable-pip-version-check --no-input)

say() { echo "$(basename "$0"): $*" >&2; }
die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }

# Does "$1" run and is it a Python with version >= $2.$3 (and, with $4, < $2.$4)?
python_ok() {
    local py=$1 major=$2 minor=$3 below=${4:-}
    local check="import sys; v = sys.version_info[:2]; sys.exit(not (v >= ($major, $minor)"
    [[ -n $below ]] && check+=" and v < ($major, $below)"
    check+="))"
    "$py" -c "$check" >/dev/null 2>&1
}

# A venv whose interpreter runs and matches the version bounds; otherwise (re)create it.
ensure_venv() {
    local dir=$1 base=$2; shift 2
    if [[ -x $dir/bin/python ]] && python_ok "$dir/bin/python" "$@"; then
        return 0
    fi
    if [[ -e $dir ]]; then
        say "$dir is broken or has the wrong Python: recreating it"
        "$base" -m venv --clear "$dir"
    else
        say "creating $dir with $("$base" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
        "$base" -m venv "$dir"
    fi
}

# ---------------------------------------------------------------- .venv (tests, kvstore)
setup_test_venv() {
    local py=${KVSTORE_PYTHON:-python3}
    if ! [[ -x $VENV/bin/python ]] || ! python_ok "$VENV/bin/python" 3 10; then
        command -v "$py" >/dev/null 2>&1 || die "$py not found: need Python >= 3.10 (set KVSTORE_PYTHON)"
        python_ok "$py" 3 10 || die "$py is $("$py" -V 2>&1 || true); need Python >= 3.10 (set KVSTORE_PYTHON)"
    fi
    ensure_venv "$VENV" "$py" 3 10

    local want have=""
    want="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$VENV/bin/python" -V 2>&1)"
    [[ -f $VENV/.kvstore-installed ]] && have=$(<"$VENV/.kvstore-installed")
    if [[ $want != "$have" ]]; then
        say "installing kvstore[test] into $VENV"
        "$VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" -e '.[test]'
        printf '%s' "$want" >"$VENV/.kvstore-installed"
    fi
}

# ---------------------------------------------------------------- .localstack-venv
find_python313() {
    local cand root
    # A pyenv shim named python3.13 may exist and still fail ("command not found" when 3.13 is
    # not the selected version), so every candidate has to actually run.
    for cand in "${KVSTORE_PYTHON313:-}" python3.13; do
        [[ -n $cand ]] || continue
        if command -v "$cand" >/dev/null 2>&1 && python_ok "$cand" 3 13 14; then
            command -v "$cand"
            return 0
        fi
    done
    root=$(pyenv root 2>/dev/null) || root=${PYENV_ROOT:-$HOME/.pyenv}
    if [[ -d $root/versions ]]; then
        local -a found=()
        for cand in "$root"/versions/3.13.*/bin/python; do
            [[ -x $cand ]] && found+=("$cand")
        done
        if ((${#found[@]})); then
            while IFS= read -r cand; do  # newest 3.13.x first
                if python_ok "$cand" 3 13 14; then
                    echo "$cand"
                    return 0
                fi
            done < <(printf '%s\n' "${found[@]}" | sort -rV)
        fi
    fi
    return 1
}

setup_localstack_venv() {
    local want have="" py313=""
    want=$(printf '%s\n' "${LS_PINS[@]}")
    if [[ -x $LS_VENV/bin/python ]] && python_ok "$LS_VENV/bin/python" 3 13 14; then
        [[ -f $LS_VENV/.kvstore-pins ]] && have=$(<"$LS_VENV/.kvstore-pins")
        [[ $want == "$have" ]] && return 0
    else
        py313=$(find_python313) || die "LocalStack (the tests' S3) needs Python 3.13, and none was \
found: python3.13 is not on PATH (or does not run) and \$(pyenv root)/versions/3.13.* does not exist. \
Get one with 'pyenv install 3.13', or 'sudo apt-get install python3.13 python3.13-venv' where your \
distribution has it, then run this again; or point KVSTORE_PYTHON313 at a Python 3.13 \
(KVSTORE_PYTHON313=/path/to/python3.13 $0)."
        ensure_venv "$LS_VENV" "$py313" 3 13 14
    fi
    say "installing LocalStack into $LS_VENV (pins: ${LS_PINS[*]})"
    "$LS_VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" "${LS_PINS[@]}"
    printf '%s\n' "${LS_PINS[@]}" >"$LS_VENV/.kvstore-pins"
}

