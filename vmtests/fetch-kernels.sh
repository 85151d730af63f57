#!/usr/bin/env bash
# Fetches Debian's 6.1 and newest 6.12 kernels into $VM_CACHE/kernels/<version>/:
# vmlinuz, the modules the VM needs (uncompressed, with their dependencies) and
# modules.load, the insmod order. Names 6.1 and 6.12 are symlinks to those dirs.
# Idempotent: a kernel already extracted is not fetched again.
# Needs apt lists (apt-get update) and Debian's mirrors, only when fetching.
set -euo pipefail
source "$(dirname "$0")/common.sh"
need apt-get apt-cache dpkg-deb depmod xz

# Modules the tests need; dependencies come from modules.dep. Names that are
# built into a kernel (modules.builtin) or absent from it are skipped. Order
# matters where modules.dep cannot tell: libcrc32c asks the crypto API for a
# crc32c provider at load time, so the providers come first.
WANTED=(
    crc32c_generic crc32c_intel libcrc32c lz4_decompress xz_dec zstd_decompress
    virtio virtio_ring virtio_pci virtio_blk virtio_console
    9pnet 9pnet_virtio 9p netfs overlay loop nbd fuse erofs ublk_drv
)

# Writes modules.load: the wanted modules and their dependencies, each after
# all of its dependencies, as paths relative to lib/modules/<version>.
resolve_modules() {
    local moddir=$1
    awk -v wanted="${WANTED[*]}" '
        function base(path,   n) { n = path; sub(/.*\//, "", n); sub(/\.ko(\.xz|\.zst|\.gz)?$/, "", n); gsub(/-/, "_", n); return n }
        function visit(name,   i, n, parts) {
            if (name in done || !(name in path)) return
            done[name] = 1
            n = split(deps[name], parts, " ")
            for (i = 1; i <= n; i++) visit(base(parts[i]))
            print path[name]
        }
        { key = $1; sub(/:$/, "", key); name = base(key); path[name] = key
          deps[name] = ""; for (i = 2; i <= NF; i++) deps[name] = deps[name] " " $i }
        END { n = split(wanted, w, " "); for (i = 1; i <= n; i++) visit(w[i]) }
    ' "$moddir/modules.dep"
}

fetch_kernel() {
    local alias=$1 package=$2 version=${2#linux-image-}
    version=${version%-unsigned}
    local dest=$VM_CACHE/kernels/$version
    # A cache made from another module list (say, before ublk_drv was wanted) is fetched again.
    if [[ -f $dest/modules.load && $(cat "$dest/wanted" 2>/dev/null) == "${WANTED[*]}" ]]; then
        echo "kernel $version: cached in $dest"
    else
        echo "kernel $version: fetching $package"
        local work; work=$(mktemp -d)
        trap 'rm -rf "$work"' EXIT
        # As root, apt-get drops to user _apt to download: let it write there.
        if (( EUID == 0 )) && id _apt >/dev/null 2>&1; then chown _apt "$work"; fi
        (cd "$work" && apt-get download -q "$package") || die "apt-get download $package failed"
        dpkg-deb -x "$work"/*.deb "$work/root"
        local src=$work/root/lib/modules/$version
        [[ -d $src ]] || die "$package has no lib/modules/$version"
        depmod -b "$work/root" "$version"  # the package leaves modules.dep to its postinst
        mkdir -p "$dest.new/modules"
        cp "$work/root/boot/vmlinuz-$version" "$dest.new/vmlinuz"
        local module
        resolve_modules "$src" | while read -r module; do
            mkdir -p "$dest.new/modules/$(dirname "$module")"
            case $module in
                *.xz) xz -dc "$src/$module" > "$dest.new/modules/${module%.xz}" ;;
                *) cp "$src/$module" "$dest.new/modules/$module" ;;
            esac
            echo "${module%.xz}"
        done > "$dest.new/modules.load"
        grep -q '/nbd\.ko$' "$dest.new/modules.load" || die "$package: no nbd module found"
        grep -q '/erofs\.ko$' "$dest.new/modules.load" || echo "kernel $version: erofs is built in"
        cp "$src/modules.builtin" "$dest.new/"
        echo "${WANTED[*]}" > "$dest.new/wanted"
        rm -rf "$dest"; mv "$dest.new" "$dest"
        rm -rf "$work"; trap - EXIT
        echo "kernel $version: $(wc -l < "$dest/modules.load") modules in $dest"
    fi
    ln -sfn "$version" "$VM_CACHE/kernels/$alias"
}

mkdir -p "$VM_CACHE/kernels"
# Both present: nothing to do (no apt query, works offline). VM_REFRESH=1 looks
# for a newer 6.12 (or 6.1 ABI) and fetches it.
current() { local dir; dir=$(kernel_dir "$1") && [[ $(cat "$dir/wanted" 2>/dev/null) == "${WANTED[*]}" ]]; }
if [[ ${VM_REFRESH:-0} != 1 ]] && current 6.1 && current 6.12; then
    echo "kernels cached: $(readlink "$VM_CACHE/kernels/6.1"), $(readlink "$VM_CACHE/kernels/6.12")"
    exit 0
fi
kernel61=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6\.1\./ { print $2; exit }')
[[ -n $kernel61 ]] || die "apt-cache depends linux-image-amd64 names no linux-image-6.1.* (run apt-get update?)"
kernel612=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' | awk '{ print $1 }' | sort -V | tail -n 1)
[[ -n $kernel612 ]] || die "apt-cache knows no linux-image-6.12.*+deb12-amd64-unsigned (run apt-get update?)"
fetch_kernel 6.1 "$kernel61"
fetch_kernel 6.12 "$kernel612"
