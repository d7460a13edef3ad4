#!/bin/bash
# How long the README's `make demo` takes: on a cold machine (a fresh clone of HEAD and an empty
# home: no uv, no uv cache, no emulator or Lambda virtualenvs), then warm (caches filled, the local
# cloud stopped), then again on the running cloud. Writes benchmarks/results/demo.md.
# Uses the default ports (4566, 5000, 8080): stop your own local cloud first (`make down`).
# PYENV_ROOT lends the emulator its Python 3.13 (and the functions their 3.12) where
# `uv python install` cannot download; on a machine that can, unset it.
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
scratch=$(mktemp -d /tmp/arrival-demo-times-XXXX)
trap 'rm -rf "$scratch"' EXIT
git clone -q "$repo" "$scratch/arrival"
mkdir -p "$scratch/home"
run() {  # label, log file
    local started ended
    started=$(date +%s.%N)
    # The rest of the environment stays: a machine's proxy and certificate settings, for example.
    env -u VIRTUAL_ENV -u UV_CACHE_DIR -u XDG_CACHE_HOME -u XDG_STATE_HOME -u XDG_DATA_HOME \
        HOME="$scratch/home" PYENV_ROOT="${PYENV_ROOT:-$HOME/.pyenv}" \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        make -C "$scratch/arrival" demo > "$2" 2>&1
    ended=$(date +%s.%N)
    printf '| %s | %.0f s |\n' "$1" "$(echo "$ended - $started" | bc)"
}
{
    echo "# make demo, cold and warm"
    echo
    echo "\`benchmarks/demo_times.sh\` on $(date -u +%F), commit $(git -C "$repo" rev-parse --short HEAD), $(nproc) cores."
    echo
    echo "| run | time |"
    echo "|---|---|"
    run "cold: fresh clone, empty home (no uv, no caches)" "$scratch/cold.log"
    HOME="$scratch/home" PATH=/usr/bin:/bin make -C "$scratch/arrival" down > /dev/null 2>&1
    run "warm: caches filled, local cloud stopped" "$scratch/warm.log"
    run "again on the running local cloud" "$scratch/again.log"
    HOME="$scratch/home" PATH=/usr/bin:/bin make -C "$scratch/arrival" down > /dev/null 2>&1
    echo
    echo "Load average afterwards: $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee "$repo/benchmarks/results/demo.md"
