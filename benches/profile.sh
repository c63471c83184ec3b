#!/usr/bin/env bash
# Where a proxy's CPU goes per message, kernel included (callgrind counts
# only user space, and at 64 B most of a relay's time is in the kernel):
# runs one case of examples/bench.rs for one target, attaches `perf` to the
# proxy process(es) for a few seconds of the measured part, and prints the
# system calls per message and the share of CPU samples in the kernel and
# in user space, with the functions that take the most.
#
# usage: benches/profile.sh [CASE] [TARGET]
#   CASE    a bench case (default rt-64B-100c)
#   TARGET  wstap, wstap-json (default), bare, floor or nginx
# System calls per message assume one read per message each way: true of
# round trips (one message in flight) of up to 4 KiB.
# Needs perf (Debian's linux-perf) and root or perf_event_paranoid <= 1 for
# kernel symbols. The recording is left in the temp dir it names.
set -euo pipefail

case_=${1:-rt-64B-100c}
target=${2:-wstap-json}
seconds=3

command -v perf >/dev/null || {
	echo "needs perf (apt-get install linux-perf)" >&2
	exit 2
}
cd "$(dirname "$0")/.."
cargo build --release --bins --examples >&2

case $target in
wstap | wstap-json) pattern="^$PWD/target/release/wstap proxy" ;;
bare | floor) pattern="examples/bench --serve-bare" ;;
nginx) pattern="^nginx: worker" ;;
*)
	echo "unknown target $target" >&2
	exit 2
	;;
esac

dir=$(mktemp -d /tmp/wstap-profile.XXXXXX)
target/release/examples/bench --no-build --only "$case_" --targets "$target" \
	--seconds $((seconds + 4)) --rounds 1 --warmup 0.5 >"$dir/bench.txt" 2>&1 &
bench=$!
# past the proxy's start and the warm-up, inside the measured seconds
sleep 2.5
pids=$(pgrep -f "$pattern" | paste -sd, - || true)
[ -n "$pids" ] || {
	wait $bench || true
	cat "$dir/bench.txt" >&2
	echo "no process matched $pattern" >&2
	exit 1
}
calls=$(for s in read write readv writev recvfrom sendto recvmsg sendmsg splice \
	epoll_wait epoll_pwait epoll_ctl futex sched_yield; do
	printf 'syscalls:sys_enter_%s,' "$s"
done)
perf stat -x, -e "${calls}raw_syscalls:sys_enter" -p "$pids" -o "$dir/stat.csv" -- sleep "$seconds" &
perf record -q -e cpu-clock -F 2999 -p "$pids" -o "$dir/perf.data" -- sleep "$seconds" >/dev/null 2>&1
wait %2 2>/dev/null || true
wait $bench

rate=$(grep -o '"msgs_per_s":[0-9.]*' "$dir/bench.txt" | head -1 | cut -d: -f2)
echo "$case_ $target: $rate msgs/s"
# per message: in a round trip of up to 4 KiB each read takes one message,
# one read each way, so half the reads count the messages of the window
# (the case's msgs/s is no count of them: perf slows the proxy it watches)
echo "system calls per message (one read each way):"
awk -F, '$1 ~ /^[0-9]+$/ { name = $3; sub(/^(raw_)?syscalls:sys_enter_?/, "", name)
	if (name == "") name = "all"; n[name] = $1; order[++k] = name
	if (name ~ /^(read|readv|recvfrom|recvmsg)$/) reads += $1 }
	END { for (i = 1; i <= k; i++) if (n[order[i]] > 0)
		printf "  %-12s %6.2f\n", order[i], n[order[i]] * 2 / reads }' "$dir/stat.csv"
echo "CPU samples, kernel and user space:"
perf report -i "$dir/perf.data" --stdio --sort dso 2>/dev/null | grep -E '^ +[0-9]' | head -6
echo "functions with the most samples:"
perf report -i "$dir/perf.data" --stdio --sort sym 2>/dev/null | grep -E '^ +[0-9]' | head -25
echo "recording: $dir/perf.data"
