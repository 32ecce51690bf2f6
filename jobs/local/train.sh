#!/usr/bin/env bash
# One lowsync training run on this machine under mpirun (jobs/lib/launch.sh adds
# --oversubscribe when RANKS > cores and --allow-run-as-root as root).
#
# env:  RANKS (4), OUT (runs/local-<time>), LOWSYNC (build/bin/lowsync), CONFIG (a TOML file),
#       EXTRA_SETS ("train.steps=200 sync.strategy=fda"), RESUME (run dir or checkpoint to resume)
# args: passed on to `lowsync train`.
# e.g.  RANKS=4 EXTRA_SETS="sync.strategy=periodic sync.period=10" jobs/local/train.sh
# Exit status is the trainer's: 0 ok, 3 stopped after a checkpoint (rerun with RESUME=$OUT).
set -euo pipefail
# shellcheck source=jobs/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
root=$(lowsync_root)
lowsync=$(lowsync_binary "$root")
ranks=${RANKS:-4}
out=${OUT:-runs/local-$(date +%Y%m%d-%H%M%S)}
lowsync_train_args "$out" "$@"
mkdir -p "$out"
echo "train.sh: $ranks ranks -> $out" >&2
LAUNCHER=${LAUNCHER:-mpirun} exec "$root/jobs/lib/launch.sh" "$ranks" "$lowsync" "${TRAIN_ARGS[@]}"
