#!/usr/bin/env bash
# Folds a fuzzer's finds into the saved corpus, minimized: the inputs of
# out/TARGET/default/queue that add coverage over corpus/TARGET (afl-cmin) are copied in
# as afl-<sha1 prefix>. Seeds and crash regressions already in corpus/ stay.
#   tests/fuzz/save-corpus.sh TARGET
set -euo pipefail
cd "$(dirname "$0")"
target=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/all"
cp corpus/"$target"/* "$tmp/all/"
for f in out/"$target"/default/queue/id:*; do
    case "$f" in *orig:*) continue ;; esac # a seed: already in corpus/
    cp "$f" "$tmp/all/afl-$(sha1sum "$f" | cut -c1-12)"
done
AFL_SKIP_BIN_CHECK=1 nice -n 19 cargo afl cmin -i "$tmp/all" -o "$tmp/min" -- "target/release/$target" >"$tmp/cmin.log" 2>&1 ||
    { cat "$tmp/cmin.log"; exit 1; }
n=0
for f in "$tmp"/min/afl-*; do
    [ -e "$f" ] || continue
    [ -e "corpus/$target/$(basename "$f")" ] || { cp "$f" "corpus/$target/"; n=$((n + 1)); }
done
echo "$target: $n inputs added; corpus now $(ls corpus/"$target" | wc -l) files, $(cat corpus/"$target"/* | wc -c) bytes"
