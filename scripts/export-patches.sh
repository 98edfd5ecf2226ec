#!/usr/bin/env bash
# Regenerate kernel_patches/linux-<series>/ from a kernel git tree whose
# commits on top of BASE are the UKL series, and check each with the tree's
# own checkpatch.pl.   usage: scripts/export-patches.sh KERNEL_GIT_DIR BASE [SERIES]
set -euo pipefail
tree=$1 base=$2 series=${3:-6.1}
out="$(cd "$(dirname "$0")/.." && pwd)/kernel_patches/linux-$series"
rm -f "$out"/*.patch
git -C "$tree" format-patch -q --no-signature --zero-commit -o "$out" "$base..HEAD"
{
    echo "# UKL patch series for Linux $series, applied in order with -p1 and no fuzz."
    (cd "$out" && ls -1 -- *.patch)
} > "$out/series"
status=0
for p in "$out"/*.patch; do
    # On standard input: given a path that git tracks, checkpatch takes the file for source.
    result=$(perl "$tree/scripts/checkpatch.pl" --no-tree - < "$p" | grep "^total:" || true)
    echo "$(basename "$p"): $result"
    case "$result" in "total: 0 errors"*) ;; *) status=1 ;; esac
done
exit $status
