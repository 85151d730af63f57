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
  # the FUSE benchmark's peer: squashfuse over a mksquashfs image of the same tree
  squashfuse squashfs-tools
  # certificates for the TLS tests
  openssl
  # the VM harness: software-emulated qemu, a busybox initramfs, module unpacking
  qemu-system-x86 busybox-static cpio gzip xz-utils kmod zstd python3
  # remote sources: libcurl (HTTP client), curl (tests' control requests), pip for the S3 server
  libcurl4-openssl-dev curl python3-pip
  # OCI registries: Distribution 2.8 (docker-registry), skopeo to push, htpasswd for Basic auth
  docker-registry skopeo apache2-utils
)

# Python packages for the remote-source tests: moto's S3 server (checks SigV4), boto3 to set it
# up, botocore's signer as the reference our signatures are compared with.
pip_packages=('moto[server]' boto3 botocore)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
if ((${#missing[@]} > 0)); then
  echo "installing: ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The python3 first on PATH runs the tests' helpers: install into it.
if ! python3 -c 'import moto.server, boto3, botocore' 2>/dev/null; then
  echo "installing (pip): ${pip_packages[*]}" >&2
  python3 -m pip install -q "${pip_packages[@]}" 2>/dev/null ||
    python3 -m pip install -q --break-system-packages "${pip_packages[@]}"
fi
