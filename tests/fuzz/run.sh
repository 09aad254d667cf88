#!/usr/bin/env bash
# Runs one AFL++ fuzzer for a bounded time at the lowest priority, resuming earlier runs:
#   tests/fuzz/run.sh TARGET SECONDS
# Findings go to out/TARGET/default/{queue,crashes,hangs}; each run appends its CPU time
# (user+sys, fuzzer and target) to out/TARGET/cpu.log. Build first: cargo afl build --release
set -euo pipefail
cd "$(dirname "$0")"
target=$1 secs=$2
out=out/$target
input=corpus/$target
# Resume the previous session of this target if there is one.
[ -f "$out/default/fuzzer_stats" ] && input=-
dict=()
[ -f "dict/$target.dict" ] && dict=(-x "dict/$target.dict")
mkdir -p "$out"
export AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_AUTORESUME=1
TIMEFORMAT="%U %S"
{ time timeout --signal=INT --kill-after=30 $((secs + 60)) nice -n 19 \
    cargo afl fuzz -V "$secs" -i "$input" -o "$out" "${dict[@]}" \
    "target/release/$target" >"$out/fuzz.log" 2>&1 || true; } 2>>"$out/cpu.log"
tail -1 "$out/cpu.log" | awk -v t="$target" '{printf "%s: %.0f CPU s this run\n", t, $1 + $2}'
