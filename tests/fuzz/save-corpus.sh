#!/usr/bin/env bash
# Folds a fuzzer's finds into the saved corpus, minimized: the inputs of
# out/TARGET/default/queue that afl-cmin keeps along with corpus/TARGET are copied in
# as afl-<sha1 prefix>. Seeds and crash regressions already in corpus/ stay.
#   tests/fuzz/save-corpus.sh TARGET [RUN]   (RUN: another directory under out/)
set -euo pipefail
cd "$(dirname "$0")"
target=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/all"
cp corpus/"$target"/* "$tmp/all/"
for f in out/"${2:-$target}"/default/queue/id:*; do
    case "$f" in *orig:*) continue ;; esac # a seed: already in corpus/
    cp "$f" "$tmp/all/afl-$(sha1sum "$f" | cut -c1-12)"
done
# The awk afl-cmin: `cargo afl cmin` (the Python one) finds no tuples with these
# persistent-mode targets. -e: edges only, not hit counts, to keep the corpus small.
bin=$(ls -d ~/.local/share/afl.rs/rustc-"$(rustc -V | cut -d' ' -f2)"-*/afl.rs-*/afl/bin | tail -1)
AFL_PATH=$bin PATH=$bin:$PATH AFL_SKIP_BIN_CHECK=1 nice -n 19 "$bin/afl-cmin.awk" -e \
    -i "$tmp/all" -o "$tmp/min" -- "target/release/$target" >"$tmp/cmin.log" 2>&1 ||
    { cat "$tmp/cmin.log"; exit 1; }
n=0
for f in "$tmp"/min/afl-*; do
    [ -e "$f" ] || continue
    [ -e "corpus/$target/$(basename "$f")" ] || { cp "$f" "corpus/$target/"; n=$((n + 1)); }
done
echo "$target: $n inputs added; corpus now $(ls corpus/"$target" | wc -l) files, $(cat corpus/"$target"/* | wc -c) bytes"
