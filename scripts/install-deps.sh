#!/usr/bin/env bash
# Installs the Debian packages this project builds and tests with, if any is missing.
# Needs root (or sudo) and Debian's package mirrors; the Swift toolchain is assumed present.
set -euo pipefail

packages=(
  # building: system libraries behind the decompressors and FUSE
  pkg-config liblzma-dev libzstd-dev zlib1g-dev liblz4-dev libfuse3-dev fuse3 libssl-dev
  # making and checking images; mount(8) and unshare(1) for the helper tests; xattr tools
  erofs-utils util-linux mount attr
  # real NBD peers for tests and benchmarks
  libnbd-bin python3-libnbd nbdkit nbd-server qemu-utils fio
  # certificates for the TLS tests
  openssl
  # the VM harness: software-emulated qemu, a busybox initramfs, module unpacking
  qemu-system-x86 busybox-static cpio gzip xz-utils kmod zstd python3
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "installing: ${missing[*]}" >&2
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
