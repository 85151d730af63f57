#!/bin/bash
# Makes the committed reader seeds (Fuzz/seeds/reader/*.erofs) with a given mkfs.erofs: tiny
# images (512-byte blocks) of one tiny tree, one per on-disk feature the reader implements.
#   Fuzz/make-reader-seeds.sh MKFS_EROFS OUTPUT_DIR
# The committed seeds came from erofs-utils 1.9.3 (Debian's 1.5 has no LZMA/DEFLATE/ZSTD, 512-byte
# blocks, extent records, metabox or long xattr prefixes); scripts/fuzz.sh adds images from the
# installed mkfs.erofs at run time.
set -euo pipefail
mkfs=${1:?usage: make-reader-seeds.sh MKFS_EROFS OUTPUT_DIR}
out=${2:?usage: make-reader-seeds.sh MKFS_EROFS OUTPUT_DIR}
mkdir -p "$out"
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT

"$(dirname "$0")/make-seed-tree.sh" "$tree"

make() {
    local name=$1
    shift
    "$mkfs" --quiet -T0 --all-root -b512 "$@" "$out/$name.erofs" "$tree" || echo "seed $name ($*) failed" >&2
}
make plain
make plain-nosbcrc -Enosbcrc
make compact -Eforce-inode-compact
make extended -Eforce-inode-extended
make dot-omitted -Edot-omitted
make chunked --chunksize=1024
make chunked-indexes --chunksize=1024 -Eforce-chunk-indexes
make xattr-prefix --xattr-prefix=trusted.overlay.
make xattr-prefix-plain --xattr-prefix=trusted.overlay. -Eplain-xattr-prefixes
make lz4 -zlz4
make lz4hc-bigpcluster -zlz4hc,level=12 -C2048
make lz4-legacy -zlz4 -Elegacy-compress
make lzma -zlzma
make deflate -zdeflate
make zstd -zzstd
make lz4-lzma -zlz4:lzma
make ztailpacking -zlz4hc -Eztailpacking
make fragments-dedupe -zlz4hc -Eztailpacking,fragments,dedupe
make all-fragments -zlzma -Eall-fragments,ztailpacking
make extents-48bit -zlz4 -E48bit
make metabox -zlz4hc -m512
make directories-compressed -zlz4 --zD=1
