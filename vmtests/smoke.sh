#!/usr/bin/env bash
# Runs inside the test VM (vmtests/run.sh -- vmtests/smoke.sh): checks the
# kernel offers what the project needs (nbd, its netlink family, erofs, fuse,
# loop) and that every corpus image reads through a loop mount exactly as its
# manifest says, as far as this kernel can read it (the corpus README's table).
# Prints one "ok - ..." / "not ok - ..." line per check, then "N passed, N failed".
set -uo pipefail
source "$(dirname "$0")/common.sh"  # REPO, expectation
EROFS_BIN=${EROFS_BIN:-$REPO/.build/debug/erofs}
CORPUS=${EROFS_CORPUS:-$REPO/../shared/corpus}
kernel=$(uname -r)
passed=0 failed=0
ok() { echo "ok - [$kernel] $*"; passed=$((passed + 1)); }
not_ok() { echo "not ok - [$kernel] $*"; failed=$((failed + 1)); }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else not_ok "$what"; fi; }

# Built-in drivers without parameters have no /sys/module entry: look for
# what they register instead.
check "nbd module loaded" test -d /sys/module/nbd
check "/dev/nbd0 is a block device" test -b /dev/nbd0
check "generic netlink family nbd resolves" python3 "$REPO/vmtests/genl-family.py" nbd
check "erofs registered" grep -qw erofs /proc/filesystems
check "fuse registered, /dev/fuse exists" sh -c 'grep -qw fuse /proc/filesystems && test -c /dev/fuse'
check "loop available (/dev/loop-control)" test -c /dev/loop-control
check "overlay registered" grep -qw overlay /proc/filesystems

if [[ ! -x $EROFS_BIN ]]; then
    not_ok "walker $EROFS_BIN missing (swift build --product erofs)"
elif [[ ! -d $CORPUS ]]; then
    not_ok "corpus not found at $CORPUS (set EROFS_CORPUS)"
else
    scratch=$(mktemp -d)
    trap 'umount "$scratch/mnt" 2>/dev/null; rm -rf "$scratch"' EXIT
    mkdir "$scratch/mnt"
    for image in "$CORPUS"/*.erofs; do
        name=$(basename "$image" .erofs)
        expect=$(expectation "$name" "$kernel")
        if ! mount -t erofs -o ro,loop "$image" "$scratch/mnt" 2> "$scratch/mount.err"; then
            if [[ $expect == refuse ]]; then ok "$name: refused, as expected on this kernel"
            else not_ok "$name: mount failed: $(tr '\n' ' ' < "$scratch/mount.err")"; fi
            continue
        fi
        "$EROFS_BIN" walk "$scratch/mnt" > "$scratch/walk" 2> "$scratch/walk.err"
        walk_status=$?
        umount "$scratch/mnt"
        if (( walk_status == 0 )) && cmp -s "$scratch/walk" "$CORPUS/$name.manifest.jsonl"; then
            case $expect in
                refuse) not_ok "$name: mounted and read, but this kernel is expected to refuse it: update the expectation" ;;
                *) ok "$name: loop mount walk equals the manifest" ;;
            esac
        elif [[ $expect == kernel-bug ]]; then
            echo "# [$kernel] $name: walk differs from the manifest (known kernel bug, not counted)"
        else
            not_ok "$name: walk (status $walk_status) differs from the manifest: $(head -c 300 "$scratch/walk.err")"
            diff "$CORPUS/$name.manifest.jsonl" "$scratch/walk" | head -n 6 | cut -c 1-200 | sed 's/^/#   /'
        fi
    done
fi
echo "$passed passed, $failed failed"
(( failed == 0 ))
