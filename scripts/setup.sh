#!/usr/bin/env bash
# Everything ukl-build needs on a Debian 12 machine: Debian packages (only
# when one is missing), then a virtualenv in .venv with ukl-build installed
# in editable mode plus the test tools.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(gcc make flex bison bc cpio perl patch xz-utils zstd binutils libelf-dev libssl-dev
          git ccache qemu-system-x86 linux-source-6.1 python3-venv procps)

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

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup: ready (.venv)"
