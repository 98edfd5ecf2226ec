#!/usr/bin/env bash
# Everything ukl-build needs on a Debian 12 machine: Debian packages (only
# when one is missing), then a virtualenv in .venv with ukl-build installed
# in editable mode plus the test tools.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found (Debian: apt-get install python3)"; exit 1; }
# The one list of Debian packages: ukl_build/host_packages.py (doctor and the
# restricted-PATH test read it too).
mapfile -t PACKAGES < <("$PYTHON" ukl_build/host_packages.py --names)
[ ${#PACKAGES[@]} -gt 0 ] || { echo "setup: ukl_build/host_packages.py listed no packages"; exit 1; }

# Debian source packages (apps may name one as their source, e.g. debian = "redis")
# need deb-src entries: derive them from this machine's own Debian entries, so
# they point at whatever mirror it already uses.
add_deb_src() {
    local sudo="" changed=0
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [ -f /etc/apt/sources.list.d/debian.sources ] \
       && ! grep -qE '^Types:.*deb-src' /etc/apt/sources.list.d/debian.sources \
       && [ ! -f /etc/apt/sources.list.d/ukl-build-deb-src.sources ]; then
        sed -E 's/^Types:.*$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
            | $sudo tee /etc/apt/sources.list.d/ukl-build-deb-src.sources >/dev/null
        changed=1
    fi
    if [ -f /etc/apt/sources.list ] && grep -qE '^deb ' /etc/apt/sources.list \
       && ! grep -qE '^deb-src ' /etc/apt/sources.list \
       && [ ! -f /etc/apt/sources.list.d/ukl-build-deb-src.list ]; then
        sed -nE 's/^deb (.*)$/deb-src \1/p' /etc/apt/sources.list \
            | $sudo tee /etc/apt/sources.list.d/ukl-build-deb-src.list >/dev/null
        changed=1
    fi
    if [ "$changed" -eq 1 ]; then
        echo "setup: added deb-src entries derived from the Debian entries; apt-get update"
        $sudo apt-get update -q
    fi
}
add_deb_src

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup: ready (.venv)"
