#!/bin/sh
# Install jobcompd from this offline bundle: no network, no compiler, no index.
#
#   ./install.sh [--prefix DIR] [--sysconfdir DIR] [--bindir DIR] [--user USER]
#                [--python PATH] [--no-systemd]
#   ./install.sh --uninstall [--prefix DIR] [--bindir DIR] [--no-systemd]
#
# Defaults: --prefix /opt/jobcompd (a virtualenv), --sysconfdir /etc/jobcompd, --bindir
# /usr/local/bin (where `jobcompd` is linked), --user slurm (the service user: the config files
# are made readable by its group), --python: the first Python >= 3.11 found.
# Running it again upgrades jobcompd in place; the configuration and the state are kept.
# --uninstall removes what this script installed and leaves the configuration and the state.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prefix=/opt/jobcompd
sysconfdir=/etc/jobcompd
bindir=/usr/local/bin
user=slurm
python=
systemd=yes
action=install

die() { echo "install.sh: $*" >&2; exit 2; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
        --sysconfdir) sysconfdir=${2:?--sysconfdir needs a directory}; shift 2 ;;
        --bindir) bindir=${2:?--bindir needs a directory}; shift 2 ;;
        --user) user=${2:?--user needs a name}; shift 2 ;;
        --python) python=${2:?--python needs a path}; shift 2 ;;
        --no-systemd) systemd=no; shift ;;
        --uninstall) action=uninstall; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
case "$prefix" in /*) ;; *) prefix=$(pwd)/$prefix ;; esac
case "$sysconfdir" in /*) ;; *) sysconfdir=$(pwd)/$sysconfdir ;; esac
case "$bindir" in /*) ;; *) bindir=$(pwd)/$bindir ;; esac

unit=/etc/systemd/system/jobcompd.service
rotate=/etc/logrotate.d/slurm-jobcomp
manifest=$prefix/.installed-by-jobcompd

if [ "$action" = uninstall ]; then
    [ -f "$manifest" ] || die "no jobcompd installed by this script in $prefix"
    if [ "$systemd" = yes ] && [ -f "$unit" ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now jobcompd.service 2>/dev/null || true
    fi
    while IFS= read -r file; do
        case "$file" in sysconfdir=*) kept=${file#sysconfdir=}; continue ;; esac
        [ -e "$file" ] || [ -L "$file" ] || continue
        rm -f "$file"
        say "removed $file"
    done < "$manifest"
    if [ "$systemd" = yes ] && command -v systemctl >/dev/null 2>&1; then
        systemctl daemon-reload 2>/dev/null || true
    fi
    rm -rf "$prefix"
    say "removed $prefix"
    say "kept the configuration in ${kept:-$sysconfdir} and the state (state.dir in jobcompd.toml," \
        "by default /var/lib/jobcompd); remove them by hand if they are no longer wanted"
    exit 0
fi

# A Python >= 3.11: the one asked for, or the newest found.
if [ -z "$python" ]; then
    for candidate in python3.13 python3.12 python3.11 python3; do
        found=$(command -v "$candidate" 2>/dev/null) || continue
        if "$found" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            python=$found
            break
        fi
    done
    [ -n "$python" ] || die "no Python >= 3.11 found (RHEL/Rocky 8/9: dnf install python3.11; then --python /usr/bin/python3.11)"
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || die "$python is not a Python >= 3.11"

group=
if id "$user" >/dev/null 2>&1; then
    group=$(id -gn "$user")
else
    say "warning: no user $user here yet: the config files stay root-only; run install.sh again once it exists"
fi
root=no
[ "$(id -u)" = 0 ] && root=yes

# The virtualenv, with pip from the bundle (no ensurepip or python3-venv package needed).
if [ ! -x "$prefix/bin/python" ]; then
    "$python" -m venv --without-pip "$prefix" || die "cannot create a virtualenv in $prefix"
fi
pip_wheel=$(ls "$here"/wheels/pip-*.whl 2>/dev/null | head -n 1)
[ -n "$pip_wheel" ] || die "the bundle has no pip wheel"
"$prefix/bin/python" "$pip_wheel/pip" install --quiet --disable-pip-version-check --no-index \
    --find-links "$here/wheels" --upgrade pip \
    || die "cannot install pip into $prefix"
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
    --find-links "$here/wheels" --upgrade jobcompd \
    || die "cannot install jobcompd from $here/wheels (wheels for another Python or platform?)"
version=$("$prefix/bin/jobcompd" --version)
say "installed $version in $prefix"

: > "$manifest.new"
record() { echo "$1" >> "$manifest.new"; }
record "sysconfdir=$sysconfdir"

mkdir -p "$bindir"
ln -sfn "$prefix/bin/jobcompd" "$bindir/jobcompd"
record "$bindir/jobcompd"
say "linked $bindir/jobcompd"

for page in jobcompd.8 jobcompd.toml.5; do
    section=${page##*.}
    mkdir -p "$prefix/share/man/man$section"
    cp "$here/man/$page" "$prefix/share/man/man$section/$page"
done

# The configuration: never overwritten; readable by the service user's group, not by others.
mkdir -p "$sysconfdir"
chmod 0755 "$sysconfdir"
for name in jobcompd.toml rdkafka.conf; do
    target=$sysconfdir/$name
    if [ -e "$target" ]; then
        say "kept $target"
        continue
    fi
    sed -e "s|/etc/jobcompd/|$sysconfdir/|g" "$here/etc/$name" > "$target"
    chmod 0640 "$target"
    if [ "$root" = yes ] && [ -n "$group" ]; then
        chgrp "$group" "$target"
    fi
    say "installed $target (0640${group:+, group $group})"
done

if [ "$systemd" = yes ]; then
    sed -e "s|^ExecStart=.*|ExecStart=$prefix/bin/jobcompd run -c $sysconfdir/jobcompd.toml|" \
        -e "s|^User=.*|User=$user|" -e "s|^Group=.*|Group=${group:-$user}|" \
        "$here/systemd/jobcompd.service" > "$unit"
    record "$unit"
    say "installed $unit"
    if [ ! -e "$rotate" ]; then
        cp "$here/etc/logrotate.d/slurm-jobcomp" "$rotate"
        record "$rotate"
        say "installed $rotate (check its path and owner against JobCompLoc and SlurmUser)"
    fi
    if command -v systemctl >/dev/null 2>&1; then
        systemctl daemon-reload || true
    fi
fi
mv "$manifest.new" "$manifest"

# Without systemd there is no StateDirectory=: the state directory (an absolute [state] dir in
# jobcompd.toml) is made here, private to the service user. An existing one is left as it is.
if [ "$systemd" = no ] && [ "$root" = yes ] && [ -n "$group" ]; then
    statedir=$("$prefix/bin/python" -c 'import sys, tomllib
with open(sys.argv[1], "rb") as f:
    d = tomllib.load(f).get("state", {}).get("dir")
print(d if isinstance(d, str) and d.startswith("/") else "")' "$sysconfdir/jobcompd.toml" 2>/dev/null) \
        || statedir=
    if [ -n "$statedir" ] && [ ! -e "$statedir" ]; then
        install -d -o "$user" -g "$group" -m 0700 "$statedir" \
            && say "created the state directory $statedir (0700, $user:$group)"
    fi
fi

say "checking the configuration as ${user}:"
if [ "$root" = yes ] && [ -n "$group" ]; then
    "$prefix/bin/jobcompd" check-config -c "$sysconfdir/jobcompd.toml" --user "$user" >/dev/null \
        && say "ok" || say "fix what is listed above, then: jobcompd check-config --user $user"
else
    "$prefix/bin/jobcompd" check-config -c "$sysconfdir/jobcompd.toml" >/dev/null \
        && say "ok" || say "fix what is listed above, then: jobcompd check-config"
fi
if [ "$systemd" = yes ]; then
    say "next: edit $sysconfdir/rdkafka.conf (bootstrap.servers) and $sysconfdir/jobcompd.toml (topic),"
    say "      then: systemctl enable --now jobcompd"
fi
