#!/bin/sh
# make dist: dist/jobcompd-VERSION-offline.tar.gz — the jobcompd wheel and the wheels of every
# dependency for this Python and platform (plus pip), etc/, systemd/, the man pages, install.sh.
# Build it with the Python the controller will run (PYTHON=python3.11 make dist): compiled
# dependencies (confluent-kafka, orjson, zstandard) are wheels for one Python version.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
version=$("$python" -c "import sys; sys.path.insert(0, '$root'); import jobcompd; print(jobcompd.__version__)")
name=jobcompd-$version-offline
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/$name
out=${DIST_DIR:-$root/dist}
mkdir -p "$stage/wheels" "$stage/man" "$out"
"$python" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$stage/wheels" "$root"
"$python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --dest "$stage/wheels" pip
cp -R "$root/etc" "$root/systemd" "$stage/"
cp "$root/man/jobcompd.8" "$root/man/jobcompd.toml.5" "$stage/man/"
cp "$root/packaging/install.sh" "$root/README.md" "$root/LICENSE" "$stage/"
chmod 0755 "$stage/install.sh"
tar -C "$work" -czf "$out/$name.tar.gz" "$name"
echo "wrote $out/$name.tar.gz ($(ls "$stage/wheels" | wc -l) wheels)"
