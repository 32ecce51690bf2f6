#!/usr/bin/env bash
# docs/configuration.md is what tools/config_doc.sh makes of this build's `lowsync config`: a key
# added, removed or re-described without regenerating the reference fails here.
set -uo pipefail
lowsync="$1"
root="${LOWSYNC_SOURCE_DIR:?}"
if diff -u "$root/docs/configuration.md" <(bash "$root/tools/config_doc.sh" "$lowsync"); then
  echo "1 passed, 0 failed"
else
  echo "docs/configuration.md is stale: run tools/config_doc.sh build/bin/lowsync > docs/configuration.md"
  echo "0 passed, 1 failed"
  exit 1
fi
