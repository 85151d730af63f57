#!/usr/bin/env bash
# Builds $VM_CACHE/initramfs-<version>.cpio.gz for a kernel fetched by
# fetch-kernels.sh (KERNEL: 6.1, 6.12 or a full version): busybox, the modules
# and vmtests/init. Rebuilds only when one of those changed.
set -euo pipefail
source "$(dirname "$0")/common.sh"
(( $# == 1 )) || die "usage: build-initramfs.sh KERNEL_VERSION"
need cpio gzip
busybox=$(command -v busybox) || die "missing busybox (install busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then die "$busybox is dynamically linked: install busybox-static"; fi
kdir=$(kernel_dir "$1") || die "kernel $1 not fetched: run vmtests/fetch-kernels.sh"
version=${kdir##*/}
image=$VM_CACHE/initramfs-$version.cpio.gz

if [[ -f $image && $image -nt $VM_DIR/init && $image -nt $kdir/modules.load && $image -nt $busybox ]]; then
    echo "$image"; exit 0
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage" "$image.$$"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,lib/modules}
cp "$busybox" "$stage/bin/busybox"
install -m 755 "$VM_DIR/init" "$stage/init"
cp -r "$kdir/modules/." "$stage/lib/modules/"
cp "$kdir/modules.load" "$stage/modules.load"
(cd "$stage" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -1) > "$image.$$"
mv "$image.$$" "$image"
echo "$image"
