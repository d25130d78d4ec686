#!/bin/bash
# Builds the fuzz targets with libFuzzer on the stable toolchain (SanitizerCoverage through
# rustc's -C flags; no nightly, no cargo-fuzz), writes the seed corpora, and runs each target.
#
#   fuzz/run.sh [TARGET...]          default: wire uevent control config
#   FUZZ_SECONDS=N                   seconds per target (default 300)
#   FUZZ_RUNS=N                      stop each target after N inputs instead (if set)
#
# Corpora grow in target/fuzz/corpus/<target> (kept between runs); a crash, hang or memory
# blowup is saved under fuzz/artifacts/<target>/ and fails the run. Reproduce one with
# `fuzz/target/x86_64-unknown-linux-gnu/release/<target> fuzz/artifacts/<target>/<file>`.
set -euo pipefail
cd "$(dirname "$0")"
FUZZ_DIR=$PWD
ROOT=$(cd .. && pwd)
TRIPLE=$(rustc -vV | awk '/^host:/ { print $2 }')
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(wire uevent control config)
SECONDS_EACH=${FUZZ_SECONDS:-300}
WORK=$ROOT/target/fuzz
mkdir -p "$WORK/logs"

# --target keeps these flags off build scripts and proc macros; --cfg fuzzing is what
# cargo-fuzz sets too. The sancov options are the ones cargo-fuzz passes on nightly.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
echo "fuzz: building ${TARGETS[*]} ($TRIPLE, release, sancov)"
# Its own target directory whatever CARGO_TARGET_DIR says: the binaries are run from there.
cargo build --release --locked --target "$TRIPLE" --target-dir "$FUZZ_DIR/target" \
	$(printf -- '--bin %s ' "${TARGETS[@]}")
BIN=$FUZZ_DIR/target/$TRIPLE/release

failed=0
summary=()
for t in "${TARGETS[@]}"; do
	corpus=$WORK/corpus/$t
	mkdir -p "$corpus" "$FUZZ_DIR/artifacts/$t"
	case $t in
		wire) max_len=8192 ;;
		uevent) max_len=16384 ;;
		*) max_len=4096 ;;
	esac
	args=(-max_len=$max_len -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
		-artifact_prefix="$FUZZ_DIR/artifacts/$t/")
	if [ -n "${FUZZ_RUNS:-}" ]; then
		args+=(-runs="$FUZZ_RUNS")
		budget="$FUZZ_RUNS runs"
	else
		args+=(-max_total_time="$SECONDS_EACH")
		budget="${SECONDS_EACH}s"
	fi
	[ "$t" = control ] && args+=(-dict="$WORK/seeds/control.dict")
	# Seeds are written fresh by the target itself from the project's encoders.
	rm -rf "$WORK/seeds/$t"
	FUZZ_WRITE_SEEDS=$WORK/seeds/$t "$BIN/$t" 2>/dev/null
	log=$WORK/logs/$t.log
	echo "fuzz: $t for $budget (log: $log)"
	start=$(date +%s)
	rc=0
	"$BIN/$t" "${args[@]}" "$corpus" "$WORK/seeds/$t" >"$log" 2>&1 || rc=$?
	wall=$(($(date +%s) - start))
	execs=$(awk '/^stat::number_of_executed_units:/ { n = $2 } END { print n + 0 }' "$log")
	decoded=$(grep -o 'accepted=[0-9]*' "$log" | tail -1 | cut -d= -f2 || true)
	units=$(ls "$corpus" | wc -l)
	if [ $rc -ne 0 ]; then
		failed=1
		summary+=("$t: FAILED (exit $rc) after ${wall}s; see $log and fuzz/artifacts/$t/")
		tail -n 40 "$log" >&2
	else
		summary+=("$t: $execs execs in ${wall}s, ${decoded:-?} decoded, corpus $units inputs, 0 crashes")
	fi
done
echo "fuzz: results"
printf '  %s\n' "${summary[@]}"
exit $failed
