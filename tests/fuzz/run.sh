#!/usr/bin/env bash
# Runs one AFL++ fuzzer at the lowest priority, resuming earlier runs:
#   tests/fuzz/run.sh TARGET SECONDS        stop after SECONDS of wall time
#   tests/fuzz/run.sh TARGET SECONDS cpu    stop after SECONDS of CPU time
# The CPU time is the whole process tree's (afl-fuzz, its fork server and the persistent
# target, which `time` alone misses), sampled from /proc every 5 s and appended to
# out/TARGET/cpu.log with the wall time. Findings go to out/TARGET/default/{queue,crashes,hangs}.
# Build first: cargo afl build --release
set -euo pipefail
cd "$(dirname "$0")"
target=$1 secs=$2 mode=${3:-wall}
out=out/$target
input=corpus/$target
# Resume the previous session of this target if there is one.
[ -f "$out/default/fuzzer_stats" ] && input=-
dict=()
[ -f "dict/$target.dict" ] && dict=(-x "dict/$target.dict")
mkdir -p "$out"
export AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_AUTORESUME=1
wall=$secs
[ "$mode" = cpu ] && wall=$((secs * 20)) # a CPU budget on a busy machine takes longer
# CPU seconds of PID and every live descendant, reaped children included (cutime).
tree_cpu() {
    awk -v root="$1" -v hz="$(getconf CLK_TCK)" '
        FNR == 1 { sub(/^[^)]*\) /, ""); split($0, f, " ")
                   ppid[FILENAME] = f[2]; cpu[FILENAME] = f[12] + f[13] + f[14] + f[15]
                   pid[FILENAME] = FILENAME; sub(/.*\/proc\//, "", pid[FILENAME]); sub(/\/stat/, "", pid[FILENAME]) }
        END { n = 1; want[root] = 1
              while (n) { n = 0; for (k in ppid) if (want[ppid[k]] && !want[pid[k]]) { want[pid[k]] = 1; n = 1 } }
              for (k in cpu) if (want[pid[k]]) s += cpu[k]; printf "%d\n", s / hz }' /proc/[0-9]*/stat 2>/dev/null
}
start=$(date +%s)
timeout --signal=INT --kill-after=30 $((wall + 60)) nice -n 19 \
    cargo afl fuzz -V "$wall" -i "$input" -o "$out" "${dict[@]}" \
    "target/release/$target" >"$out/fuzz.log" 2>&1 &
root=$!
used=0
while kill -0 "$root" 2>/dev/null; do
    sleep 5
    now=$(tree_cpu "$root") && [ -n "$now" ] && [ "$now" -gt "$used" ] && used=$now
    if [ "$mode" = cpu ] && [ "$used" -ge "$secs" ]; then
        # SIGINT makes afl-fuzz stop cleanly and write its stats; timeout then exits.
        for p in $(pgrep -x afl-fuzz); do
            tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- "-o $out " &&
                kill -INT "$p" 2>/dev/null || true
        done
    fi
done
wait "$root" || true
echo "$(date -u +%FT%TZ) cpu_s=$used wall_s=$(($(date +%s) - start))" >>"$out/cpu.log"
echo "$target: $used CPU s, $(($(date +%s) - start)) s wall this run"
