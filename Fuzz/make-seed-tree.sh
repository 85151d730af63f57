#!/bin/bash
# Fills DIR with the tiny tree every reader seed image is made of: a file of each kind,
# a hard link, xattrs (ordinary and overlay ones, for the long prefix table), a deep directory.
#   Fuzz/make-seed-tree.sh DIR
# Device nodes and trusted.* xattrs need root; without it they are left out.
set -euo pipefail
tree=${1:?usage: make-seed-tree.sh DIR}
mkdir -p "$tree/dir/sub/deeper" "$tree/empty"
echo hello > "$tree/small"
head -c 3000 /dev/zero | tr '\0' x > "$tree/repetitive"
awk 'BEGIN { srand(7); for (i = 0; i < 1500; i++) printf "%c", 32 + int(rand() * 90) }' > "$tree/dir/sub/deeper/mixed"
ln -s small "$tree/symlink"
ln "$tree/small" "$tree/hardlink"
mknod "$tree/chardev" c 1 3 2>/dev/null || true
mkfifo "$tree/fifo"
setfattr -n user.comment -v value "$tree/small" 2>/dev/null || true
setfattr -n trusted.overlay.opaque -v y "$tree/dir" 2>/dev/null || true
setfattr -n trusted.overlay.redirect -v /x "$tree/dir/sub" 2>/dev/null || true
