#!/usr/bin/env bash
# The whole job on a built-in sample: install what is missing, build, make an EROFS image with
# Debian's mkfs.erofs, mount it with our mount.erofs, list it, unmount it. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $(id -u) -eq 0 ]] || { echo "demo: run as root (it mounts a filesystem)" >&2; exit 1; }
scripts/install-deps.sh
swift build --product mount.erofs >/dev/null
swift build --product erofs >/dev/null
bin=$(swift build --show-bin-path)

work=$(mktemp -d /var/tmp/erofs-demo.XXXXXX)   # not tmpfs: file-backed mounts need a real disk
mountpoint="$work/mnt"
cleanup() {
  if grep -q " $mountpoint " /proc/self/mountinfo; then "$bin/mount.erofs" -u "$mountpoint" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== a sample tree"
mkdir -p "$work/tree/docs" "$mountpoint"
printf 'Hello from EROFS!\n' > "$work/tree/hello.txt"
seq 1 20000 > "$work/tree/docs/numbers.txt"
ln -s hello.txt "$work/tree/link-to-hello"
head -c 100000 /dev/urandom > "$work/tree/random.bin"

echo "== mkfs.erofs -zlz4hc"
mkfs.erofs -zlz4hc "$work/sample.erofs" "$work/tree" >/dev/null
ls -l "$work/sample.erofs"

echo "== mount.erofs $work/sample.erofs $mountpoint"
"$bin/mount.erofs" -v "$work/sample.erofs" "$mountpoint"
grep " $mountpoint " /proc/self/mountinfo

echo "== ls -lR"
ls -lR "$mountpoint"
echo "== cat hello.txt"
cat "$mountpoint/hello.txt"
cmp "$mountpoint/random.bin" "$work/tree/random.bin" && echo "random.bin: identical to the source"

echo "== mount.erofs -u $mountpoint"
"$bin/mount.erofs" -v -u "$mountpoint"
if grep -q " $mountpoint " /proc/self/mountinfo; then echo "demo: still mounted!" >&2; exit 1; fi
echo "demo: OK"
