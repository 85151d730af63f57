#!/bin/sh
# Builds the libFuzzer target over the Compression module (with AddressSanitizer) and runs it.
#   Fuzz/run.sh [SECONDS] [extra libFuzzer flags...]      (default 300 s; from the repo root)
# Crashing inputs land in .build/fuzz/ as crash-*; replay one with
#   .build/fuzz/decompress-fuzzer .build/fuzz/crash-...
set -eu
cd "$(dirname "$0")/.."
seconds=${1:-300}
[ $# -gt 0 ] && shift
out=.build/fuzz
mkdir -p "$out/corpus" "$out/seeds"
modules="-I Sources/CLZ4 -I Sources/CLZMA -I Sources/CZlib -I Sources/CZstd"
libs="-llz4 -llzma -lz -lzstd"

swiftc -O $modules $libs Fuzz/MakeSeeds.swift -o "$out/make-seeds"
"$out/make-seeds" "$out/seeds"

# The Compression sources and the entry point as one module, instrumented for libFuzzer + ASan.
swiftc -O -g -parse-as-library -sanitize=fuzzer,address -module-name DecompressFuzzer \
    $modules $libs Sources/Compression/*.swift Fuzz/DecompressFuzzer.swift -o "$out/decompress-fuzzer"

cd "$out"
# Let libFuzzer report crashes itself (the Swift backtracer takes seconds per crash).
export SWIFT_BACKTRACE=enable=no
exec ./decompress-fuzzer -max_total_time="$seconds" -max_len=70000 -artifact_prefix=./ "$@" corpus seeds
