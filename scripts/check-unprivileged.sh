#!/usr/bin/env bash
# Runs `make check` as an unprivileged user, to show that it needs no root: started as root, it
# drops to USER (default nobody: no capabilities, no supplementary groups, no_new_privs).
# That user cannot write the checkout's .build, so it builds in its own scratch path and HOME
# under DIR (default /var/tmp/erofs-check-USER, kept: the second run is a warm build).
#   scripts/check-unprivileged.sh [DIR]      CHECK_USER=name for another user
# Root's git settings (a package mirror's url.insteadOf) carry over, so dependencies resolve
# as they do for root. SwiftPM warns that the user's real home (nobody's /nonexistent) has no
# cache directory: harmless.
set -euo pipefail
cd "$(dirname "$0")/.."
user=${CHECK_USER:-nobody}
dir=${1:-/var/tmp/erofs-check-$user}
if [[ $(id -u) -ne 0 ]]; then
    # Already unprivileged: nothing to drop.
    exec make check
fi
group=$(id -gn "$user")
install -d -o "$user" -g "$group" -m 0755 "$dir" "$dir/home"
if [[ -f $HOME/.gitconfig ]]; then
    install -o "$user" -g "$group" -m 0644 "$HOME/.gitconfig" "$dir/home/.gitconfig"
    # git refuses repositories another user owns (a root-owned local mirror) unless told.
    git config --file "$dir/home/.gitconfig" --replace-all safe.directory '*'
fi
exec setpriv --reuid="$user" --regid="$group" --clear-groups --inh-caps=-all --no-new-privs \
    env -i PATH="$PATH" HOME="$dir/home" TMPDIR="$dir" LANG=C.UTF-8 \
    make check SCRATCH="$dir/build"
