#!/usr/bin/env bash
# Sets up what is missing and runs SPT.
#
#   ./run_t5x.sh [default ARGS]  the embedded default: SPT, no memory and
#                                prompt tuning, two seeds (CPU, minutes), with
#                                their paired differences; run again, it
#                                prints the recorded results
#   ./run_t5x.sh study [ARGS]    the study: those, 20 seeds each, mean +- SE
#                                and paired 95% intervals (runs/default,
#                                reusing the default's runs)
#   ./run_t5x.sh test [ARGS]     the test suite (pytest ARGS)
#   ./run_t5x.sh train ARGS      python -m spt_jax.local.train ARGS (local runner)
#   ./run_t5x.sh eval ARGS       python -m spt_jax.local.eval ARGS
#   ./run_t5x.sh compare ARGS    python -m spt_jax.study.compare ARGS
#   ./run_t5x.sh cache ARGS      seqio.scripts.cache_tasks_main over our tasks
#                                (--tasks=REGEX,... --output_cache_dir=DIR),
#                                for T5X's USE_CACHED_TASKS = True
#   ./run_t5x.sh tpu ACTION --tpu NAME --zone ZONE [OPTIONS] [-- ARGS]
#                                on every worker of a Cloud TPU VM: setup,
#                                train / eval / infer (detached, one log per
#                                worker), logs, stop (spt_jax/launch/tpu_pod.py;
#                                `./run_t5x.sh tpu --help`)
#
# The virtualenv lives in $SPT_VENV (default: .venv beside this script) and is
# re-synced whenever a requirements file changes. With SPT_T5X_WHEELS=DIR, a
# folder of T5X, airio and jestimator wheels beside a requirements.txt of what
# they import from PyPI (as CI has), `test` also installs T5X, so that the
# T5X tests run instead of skipping.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${SPT_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"

die() { echo "run_t5x.sh: $*" >&2; exit 2; }

# ensure_venv REQUIREMENTS_FILE: creates the venv and installs the file's
# pins, skipping the install when the pins are unchanged since the last one.
ensure_venv() {
  local requirements="$REPO/$1" stamp want
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "Creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  stamp="$VENV/.spt-requirements-$(basename "$1").sha256"
  want="$(cat "$REPO"/requirements*.txt | sha256sum | cut -d' ' -f1)"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "Installing $1 into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r "$requirements"
    echo "$want" > "$stamp"
  fi
}

# Installs requirements-cache.txt (SeqIO's Beam cache writer) with --no-deps:
# Beam's protobuf cap would downgrade the pins (see that file).
ensure_cache_writer() {
  local stamp="$VENV/.spt-requirements-cache.sha256" want
  want="$(sha256sum < "$REPO/requirements-cache.txt" | cut -d' ' -f1)"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "Installing requirements-cache.txt into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --no-deps -r "$REPO/requirements-cache.txt"
    echo "$want" > "$stamp"
  fi
}

# Installs the wheels of $SPT_T5X_WHEELS (if set) with --no-deps: their
# metadata names git URLs that would replace the project's pins.
ensure_t5x_wheels() {
  local wheels="${SPT_T5X_WHEELS:-}" stamp want
  [[ -n "$wheels" ]] || return 0
  compgen -G "$wheels/*.whl" >/dev/null || die "SPT_T5X_WHEELS=$wheels holds no wheels"
  stamp="$VENV/.spt-t5x-wheels.sha256"
  want="$(cat "$wheels"/*.whl "$wheels"/requirements.txt 2>/dev/null | sha256sum | cut -d' ' -f1)"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "Installing T5X from $wheels into $VENV" >&2
    if [[ -f "$wheels/requirements.txt" ]]; then
      "$VENV/bin/python" -m pip install --quiet -r "$wheels/requirements.txt"
    fi
    "$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall "$wheels"/*.whl
    echo "$want" > "$stamp"
  fi
}

# Runs the venv's Python in the caller's folder, so that relative paths
# (gin files, MODEL_DIR) mean what they mean there; gin files are also looked
# up in this repository.
run_python() {
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
  exec "$VENV/bin/python" "$@"
}

command="${1:-default}"
[[ $# -gt 0 ]] && shift
case "$command" in
  default)
    ensure_venv requirements.txt
    run_python -m spt_jax.study.compare "$@" ;;
  study)
    ensure_venv requirements.txt
    run_python -m spt_jax.study.compare --seeds=20 "$@" ;;
  test)
    ensure_venv requirements-test.txt
    ensure_cache_writer
    ensure_t5x_wheels
    # loadfile: each test module runs in one worker, so that its module
    # fixtures (trained runs, compiled models, chains of T5X runs) are built
    # once. (xdist_group marks, for --dist loadgroup, have no effect with
    # pytest 9 and pytest-xdist 3.8.)
    cd "$REPO"
    run_python -m pytest -n 2 --dist loadfile "$@" ;;
  cache)
    ensure_venv requirements.txt
    ensure_cache_writer
    run_python -m seqio.scripts.cache_tasks_main --module_import=tasks "$@" ;;
  train|eval)
    ensure_venv requirements.txt
    run_python -m "spt_jax.local.$command" "$@" ;;
  compare)
    ensure_venv requirements.txt
    run_python -m spt_jax.study.compare "$@" ;;
  tpu)
    # Standard library only: runs where gcloud is, without the venv.
    exec "$PYTHON" "$REPO/spt_jax/launch/tpu_pod.py" "$@" ;;
  -h|--help|help)
    # The header comment: from line 2 to the first line that is not a comment.
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0" ;;
  *)
    die "unknown command '$command' (default, study, test, train, eval, compare, cache, tpu, help)" ;;
esac
