#!/usr/bin/env bash
# Instructions wstap executes per message, counted by callgrind: one case of
# examples/bench.rs with the wstap process run under valgrind. Unlike msgs/s
# on a shared VM this count barely moves between runs (about 2%), so it
# tells whether a change to the relay path made wstap cheaper.
#
# usage: benches/callgrind.sh [CASE] [TARGET] [BINARY]
#   CASE    a bench case (default rt-64B-1c: one frame per read, so the
#           count per message is the same in every run)
#   TARGET  wstap (--quiet, no sinks) or wstap-json (default)
#   BINARY  the wstap binary to measure (default target/release/wstap,
#           built first)
# Prints instructions per message and the functions that execute the most;
# the full profile is left in the temp dir it names, for callgrind_annotate.
set -euo pipefail

case_=${1:-rt-64B-1c}
target=${2:-wstap-json}
bin=${3:-}

command -v valgrind >/dev/null || {
	echo "needs valgrind (apt-get install valgrind)" >&2
	exit 2
}
cd "$(dirname "$0")/.."
cargo build --release --example bench >&2
if [ -z "$bin" ]; then
	cargo build --release --bin wstap >&2
	bin=$PWD/target/release/wstap
fi

dir=$(mktemp -d /tmp/wstap-callgrind.XXXXXX)
cat >"$dir/wstap" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file=$dir/callgrind.out.%p "$bin" "\$@"
EOF
chmod +x "$dir/wstap"

# under valgrind wstap runs some 50 times slower: a few seconds give
# thousands of messages, which is plenty for a count per message
# --seed: the same payload bytes every run (their JSON escaping is part of
# the count)
target/release/examples/bench --no-build --wstap "$dir/wstap" --only "$case_" \
	--targets "$target" --seconds 3 --rounds 1 --warmup 0.5 --seed 1 >"$dir/bench.txt" 2>&1 || {
	cat "$dir/bench.txt" >&2
	exit 1
}

msgs=$(grep -o '"messages_verified":[0-9]*' "$dir/bench.txt" | cut -d: -f2)
# the bench also runs `wstap --version`: the proxy is the run that proxied
out=$(grep -l '^cmd:.* proxy ' "$dir"/callgrind.out.* | head -1)
total=$(awk '/^totals:/ {print $2}' "$out")
echo "$case_ $target: $msgs messages, $total instructions in wstap (start-up included): $((total / msgs)) per message"
echo "profile: $out"
callgrind_annotate "$out" 2>/dev/null | sed -n '/file:function/,$p' | sed -n '3,22p' |
	sed -E 's|[^ ]*/\.cargo/registry/src/[^/]*/||; s|/rustc/[0-9a-f]*/library/||; s| \[[^]]*\]$||'
