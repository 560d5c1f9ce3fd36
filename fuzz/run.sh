#!/usr/bin/env bash
# Runs the fuzz targets; see fuzz/README.md.
#
#   fuzz/run.sh build              build the Rust targets (cargo fuzz, RUSTC_BOOTSTRAP=1)
#   fuzz/run.sh smoke [SECONDS]    every target for SECONDS (default 8) one after another
#   fuzz/run.sh long SECONDS       every target for SECONDS, all at once, at nice 19
#   fuzz/run.sh report DIR         the per-target table of a finished (or running) run
#   fuzz/run.sh replay TARGET FILE...   re-run saved inputs of one target
#
# Each run writes fuzz/work/runs/<mode>-<time>/: <target>.log (the fuzzer's output),
# summary.txt (the table). Corpora grow in fuzz/work/corpus/<target>/ (seeded from
# fuzz/corpus/<target>/), crash inputs land in fuzz/work/artifacts/<target>/.
# Environment: FUZZ_TARGETS="py-ops rust-matmul ..." picks targets; FUZZ_RSS_MB (2048)
# the memory limit per target; FUZZ_STRICT=1 makes smoke fail on any crash found.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
WORK="$HERE/work"
RUST_BIN="$HERE/rust/target/x86_64-unknown-linux-gnu/release"
ALL_TARGETS="rust-matmul rust-rowops rust-attention py-ops py-files py-cli"
TARGETS="${FUZZ_TARGETS:-$ALL_TARGETS}"
RSS_MB="${FUZZ_RSS_MB:-2048}"
PY="${FUZZ_PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

build() {
    (cd "$HERE/rust" && RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir . 2>&1 | tail -3) || return 1
    for t in matmul rowops attention; do
        [ -x "$RUST_BIN/$t" ] || { echo "run.sh: $RUST_BIN/$t was not built" >&2; return 1; }
    done
}

have_atheris() { "$PY" -c "import atheris" 2>/dev/null; }

# run_target TARGET SECONDS LOG MODE: one target for SECONDS; its output to LOG.
run_target() {
    local target="$1" seconds="$2" log="$3" mode="$4"
    local corpus="$WORK/corpus/$target" artifacts="$WORK/artifacts/$target"
    local seeds="$HERE/corpus/$target" regressions="$HERE/regressions/$target"
    mkdir -p "$corpus" "$artifacts"
    local dirs=("$corpus")
    [ -d "$seeds" ] && dirs+=("$seeds")
    # Python targets go on past crashes, so the regression inputs run first as seeds (the
    # open findings show as CRASH lines at once); a Rust smoke run would stop on them
    case "$target" in py-*) [ -d "$regressions" ] && dirs+=("$regressions") ;; esac
    local common=(-rss_limit_mb="$RSS_MB" -print_final_stats=1 -artifact_prefix="$artifacts/")
    local start=$SECONDS
    : > "$log"
    case "$target" in
    rust-*)
        local bin="$RUST_BIN/${target#rust-}"
        [ -x "$bin" ] || { echo "run.sh: $bin missing; run fuzz/run.sh build" >> "$log"; return 1; }
        if [ "$mode" = smoke ]; then
            # plain libFuzzer: stops at the first crash, which then counts as found
            timeout -s KILL $((seconds + 60)) "$bin" "${common[@]}" -timeout=30 \
                -max_total_time="$seconds" "${dirs[@]}" >> "$log" 2>&1
        else
            # fork mode goes on past crashes; the first third draws huge dims (overflows),
            # the rest runs with FERROFORMER_FUZZ_HUGE=0 to look past those
            local first=$((seconds / 3)) rest=$((seconds - seconds / 3))
            echo "== phase huge-dims ($first s)" >> "$log"
            timeout -s KILL $((first + 300)) "$bin" "${common[@]}" -timeout=30 -fork=1 \
                -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
                -max_total_time="$first" "${dirs[@]}" >> "$log" 2>&1
            echo "== phase no-huge-dims ($rest s)" >> "$log"
            FERROFORMER_FUZZ_HUGE=0 timeout -s KILL $((rest + 300)) "$bin" "${common[@]}" \
                -timeout=30 -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
                -max_total_time="$rest" "${dirs[@]}" >> "$log" 2>&1
        fi
        ;;
    py-*)
        have_atheris || { echo "run.sh: atheris is not installed for $PY" >> "$log"; return 1; }
        local script="$HERE/python/fuzz_${target#py-}.py"
        local end=$((SECONDS + seconds)) left
        # keep-going mode: each distinct finding is one CRASH line and the run goes on;
        # a process that dies anyway (a native crash) is started again until time is up
        while left=$((end - SECONDS)); [ "$left" -gt 2 ]; do
            echo "== life (${left} s left)" >> "$log"
            FUZZ_KEEP_GOING=1 FUZZ_ARTIFACTS="$artifacts" FUZZ_MEMORY_MB="$RSS_MB" \
                timeout -s KILL $((left + 120)) "$PY" "$script" "${common[@]}" -timeout=0 \
                -max_total_time="$left" "${dirs[@]}" >> "$log" 2>&1
            local rc=$?
            [ "$mode" = smoke ] && break
            [ "$rc" -eq 0 ] && break
        done
        ;;
    *) echo "run.sh: unknown target $target" >> "$log"; return 1 ;;
    esac
    echo "== done in $((SECONDS - start)) s" >> "$log"
    return 0
}

# summary DIR: one line per target of the logs in DIR
summary() {
    local dir="$1"
    printf "%-15s %12s %9s %8s %8s  %s\n" target execs crashes corpus seconds status
    for log in "$dir"/*.log; do
        [ -e "$log" ] || continue
        local target; target="$(basename "$log" .log)"
        local artifacts="$WORK/artifacts/$target" corpus="$WORK/corpus/$target"
        local execs crashes files status secs
        # execs: libFuzzer's final count per process (fork mode: its last "#N:" line)
        execs=$(awk '
            /^stat::number_of_executed_units:/ { total += $2; seen = 1; last = 0; next }
            /^#[0-9]+[:\t ]/ { n = substr($1, 2); sub(/:$/, "", n); last = n + 0 }
            /^== / { total += last; last = 0 }
            END { print total + last }' "$log")
        secs=$(sed -n 's/^== done in \([0-9]*\) s$/\1/p' "$log" | tail -1)
        case "$target" in
        py-*)
            # distinct findings: CRASH keys, plus deaths libFuzzer reported itself
            crashes=$( (grep -h "^CRASH " "$log" | awk '{print $2}';
                        grep -h "ERROR: libFuzzer: \|^==[0-9]*== ERROR" "$log" | sed 's/==[0-9]*==//') \
                        | sort -u | grep -c .)
            ;;
        rust-*)
            local found; found=$(ls "$artifacts" 2>/dev/null | grep -c "^\(crash\|oom\|timeout\|leak\)-")
            if [ "$found" -gt 0 ]; then
                # distinct causes of the crash files written by this run (at most 300 replayed)
                crashes=$(find "$artifacts" -maxdepth 1 -type f -newer "$dir/started" \
                              -name "crash-*" -o -type f -newer "$dir/started" -name "oom-*" \
                              -o -type f -newer "$dir/started" -name "timeout-*" | head -300 \
                          | xargs -r python3 "$HERE/rust/triage.py" --brief "${target#rust-}")
            else
                crashes=0
            fi
            ;;
        esac
        files=$(ls "$corpus" 2>/dev/null | wc -l)
        status=ok
        grep -q "^run.sh: " "$log" && status="$(grep -m1 '^run.sh: ' "$log")"
        printf "%-15s %12s %9s %8s %8s  %s\n" "$target" "${execs:-0}" "${crashes:-0}" "$files" \
            "${secs:--}" "$status"
    done
}

new_run_dir() {
    local dir; dir="$WORK/runs/$1-$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$dir" && touch "$dir/started" && echo "$dir"
}

cmd="${1:-}"
[ -n "$cmd" ] || usage
shift
case "$cmd" in
build) build ;;
smoke)
    seconds="${1:-8}"
    dir="$(new_run_dir smoke)"
    failed=0
    case "$TARGETS" in *rust-*) build > "$dir/build.txt" 2>&1 || { cat "$dir/build.txt"; failed=1; } ;; esac
    for t in $TARGETS; do
        case "$t" in py-*) have_atheris || { echo "skip $t: atheris is not installed"; continue; } ;; esac
        echo "smoke: $t (${seconds} s)"
        run_target "$t" "$seconds" "$dir/$t.log" smoke || failed=1
    done
    summary "$dir" | tee "$dir/summary.txt"
    echo "logs: $dir"
    # a target that did not run fails the smoke run; so does one that never executed an input
    awk 'NR > 1 && ($2 == 0 || $6 != "ok") { bad = 1 } END { exit bad }' "$dir/summary.txt" || failed=1
    if [ "${FUZZ_STRICT:-0}" = 1 ]; then
        awk 'NR > 1 && $3 != 0 { bad = 1 } END { exit bad }' "$dir/summary.txt" || failed=1
    fi
    exit "$failed"
    ;;
long)
    seconds="${1:?fuzz/run.sh long SECONDS}"
    dir="$(new_run_dir long)"
    echo "long run: $TARGETS, $seconds s each, all at once; logs in $dir"
    case "$TARGETS" in *rust-*) build > "$dir/build.txt" 2>&1 || { cat "$dir/build.txt"; exit 1; } ;; esac
    pids=()
    for t in $TARGETS; do
        nice -n 19 "$0" _one "$t" "$seconds" "$dir/$t.log" long &
        pids+=($!)
        echo "started $t (pid $!)"
    done
    echo "$$" > "$dir/run.pid"
    for p in "${pids[@]}"; do wait "$p"; done
    echo "finished $(date)"
    summary "$dir" | tee "$dir/summary.txt"
    echo "logs: $dir"
    ;;
_one)  # internal: one target of a long run, in its own (niced) process
    run_target "$@"
    ;;
report)
    summary "${1:?fuzz/run.sh report DIR}"
    ;;
replay)
    target="${1:?fuzz/run.sh replay TARGET FILE...}"
    shift
    case "$target" in
    rust-*) python3 "$HERE/rust/triage.py" "${target#rust-}" "$@" ;;
    py-*) "$PY" "$HERE/python/replay.py" "fuzz_${target#py-}" "$@" ;;
    *) echo "run.sh: unknown target $target" >&2; exit 2 ;;
    esac
    ;;
*) usage ;;
esac
