#!/bin/bash
# Builds one libFuzzer target (release, -sanitize=fuzzer, AddressSanitizer) and runs it.
#   scripts/fuzz.sh reader|extract|nbd|fuse|remote|decompress [SECONDS] [extra libFuzzer flags...]   (default 60 s)
# Work dir: .build-fuzz/work/TARGET/ (corpus/ grows across runs, seeds/ is regenerated,
# crash-*/timeout-*/oom-* land in artifacts/, each run's log in logs/). Replay an artifact:
#   .build-fuzz/release/ReaderFuzzer .build-fuzz/work/reader/artifacts/crash-...
# See Fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

target=${1:?usage: scripts/fuzz.sh reader|extract|nbd|fuse|remote|decompress [SECONDS] [libFuzzer flags...]}
seconds=${2:-60}
shift $(( $# >= 2 ? 2 : 1 ))

case $target in
    reader) product=ReaderFuzzer; max_len=65536 ;;
    # Lists and extracts each input into its own size-limited tmpfs (root only).
    extract) product=ExtractFuzzer; max_len=65536 ;;
    nbd) product=NBDFuzzer; max_len=4096 ;;
    # Requests as read from /dev/fuse, answered on one of the mkfs.erofs seed images below.
    fuse) product=FUSEFuzzer; max_len=8192 ;;
    # What registries, token servers and S3/HTTP servers send, one parser per input (first byte).
    remote) product=RemoteFuzzer; max_len=16384 ;;
    # The Compression target has its own script (swiftc over the module's sources).
    decompress) exec Fuzz/run.sh "$seconds" "$@" ;;
    *) echo "unknown target '$target' (reader, extract, nbd, fuse, remote or decompress)" >&2; exit 2 ;;
esac

# The fuzzer targets exist only with EROFS_FUZZERS=1 (Package.swift); a separate scratch path
# keeps the instrumented build away from the normal .build.
EROFS_FUZZERS=1 nice -n 10 swift build --scratch-path .build-fuzz -c release --product "$product" \
    --sanitize=address -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library
binary=$repo/.build-fuzz/release/$product

work=$repo/.build-fuzz/work/$target
mkdir -p "$work/corpus" "$work/artifacts" "$work/logs"
rm -rf "$work/seeds"
mkdir -p "$work/seeds"
cp "$repo/Fuzz/seeds/$target"/* "$work/seeds/" 2>/dev/null || true
# The extract target starts from the crafted shapes (Fuzz/seeds/extract) and the reader's seeds.
[ "$target" = extract ] && cp "$repo/Fuzz/seeds/reader"/* "$work/seeds/"

if [ "$target" = reader ] || [ "$target" = extract ] || [ "$target" = fuse ]; then
    # Small images of one tiny tree, one per layout mkfs.erofs (Debian's 1.5) can make.
    if command -v mkfs.erofs >/dev/null; then
        tree=$work/tree
        rm -rf "$tree"
        Fuzz/make-seed-tree.sh "$tree"
        n=0
        for options in "" "-zlz4" "-zlz4hc" "-zlz4hc -C16384" "-zlz4 -Eztailpacking" "-zlz4 -Efragments" \
            "-zlz4hc -Efragments,ztailpacking,dedupe" "--chunksize=4096" "-Eforce-inode-compact" \
            "-Eforce-inode-extended" "-Elegacy-compress" "-zlz4hc -Enoinline_data"; do
            n=$((n + 1))
            # shellcheck disable=SC2086
            mkfs.erofs --quiet -T0 --all-root $options "$work/seeds/mkfs-$n.erofs" "$tree" >/dev/null 2>&1 \
                || echo "mkfs.erofs $options failed; seed skipped" >&2
        done
    else
        echo "mkfs.erofs not found: only the committed seeds" >&2
    fi
fi

if [ "$target" = fuse ]; then
    # The requests are the input; the image they are answered from is fixed: lz4hc with
    # fragments and tail packing, so that reads, readdir, xattrs and lseek reach real data.
    export FUSE_FUZZ_IMAGE=$work/image.erofs
    mv "$work/seeds/mkfs-7.erofs" "$FUSE_FUZZ_IMAGE"
    rm -f "$work"/seeds/*.erofs
fi

log=$work/logs/$(date -u +%Y%m%dT%H%M%SZ).log
echo "fuzzing $target for $seconds s; log: $log"
cd "$work"
# libFuzzer reports crashes itself; the Swift backtracer would take seconds per crash.
export SWIFT_BACKTRACE=enable=no
# Hand freed memory back to the system, so that RSS measures what inputs use, not the allocator.
export ASAN_OPTIONS=${ASAN_OPTIONS:-allocator_release_to_os_interval_ms=500}
set +e
nice -n 10 "$binary" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -max_len=$max_len \
    -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$@" corpus seeds >"$log" 2>&1
status=$?
set -e
# The findings (sanitizer reports, artifacts) and the final stats; the whole output is in $log.
grep -E '^(==[0-9]+==|SUMMARY|artifact_prefix|Test unit written|#[0-9]+[[:space:]]+(INITED|DONE))|stat::' "$log" || tail -20 "$log"
exit "$status"
