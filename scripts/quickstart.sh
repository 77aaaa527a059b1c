#!/usr/bin/env bash
# Runs the README's quickstart verbatim (the sh block between the
# `<!-- quickstart -->` markers), on a fresh dev data dir, and stops the dev
# cluster afterwards whatever happens. CI runs this so the README cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/dev.sh stop >/dev/null
rm -rf .ferrolog-dev/data
block=$(awk '/<!-- quickstart -->/{on=!on; next} on' README.md | sed '/^```/d')
[[ -n $block ]] || { echo "no quickstart block in README.md" >&2; exit 1; }
trap 'scripts/dev.sh stop >/dev/null' EXIT
echo "$block"
bash -euo pipefail -c "$block"
