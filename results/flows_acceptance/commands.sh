#!/usr/bin/env bash
# Issue 28's acceptance: Gaussian vs flow guides on Fashion-MNIST, 10 epochs, IWAE K = 5000
# on the fixed 1000-image test subset (seed 0), best-validation checkpoint; one thread.
#   bash results/flows_acceptance/commands.sh m2 0      # one setting and seed
# Each run is an ordinary run directory under $RUNS; `ppl-ssvae compare` keeps its scores
# in the run, so the table below is rebuilt without paying for an IWAE twice. The table
# and each run's commit and CPU capability go to results/flows_acceptance/SETTING-sSEED.md,
# or to $TABLE.md when a run adds guides to a setting whose table exists:
#   GUIDES="gaussian nsf" TABLE=m2-s0-nsf bash results/flows_acceptance/commands.sh m2 0
# $SCORE replaces the scoring, e.g. every run's last epoch, so that runs whose best
# validation epochs differ are compared at the same epoch; `table NAME RUN...` only scores
# and tabulates existing runs; $GUIDE_ARG (KEY=VALUE) and $SUFFIX train a variant:
#   SCORE="--checkpoint last --iwae 1000 --iwae-rows 1000" bash .../commands.sh table gmdgm-s0-last-k1000 RUN...
#   GUIDES=maf GUIDE_ARG='hidden_features=[128,128]' SUFFIX=-w128 SCORE="..." bash .../commands.sh gmdgm 0
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=1
RUNS=${RUNS:-/work/runs/flows_acceptance}
GUIDES=${GUIDES:-"gaussian maf pyro-iaf planar nsf"}
SCORE=${SCORE:-"--iwae 5000 --iwae-rows 1000"}
setting=$1 seed=${2:-0}
case $setting in
  table)       ;;
  latent-100)  args="--model latent --labels 100 --labelled-share 1:1" ;;
  latent-1000) args="--model latent --labels 1000 --labelled-share 1:1" ;;
  m2)          args="--model m2 --labels 3000" ;;
  gmdgm)       args="--model gmdgm --labels 3000" ;;
  init-from)   args="--model m2 --labels 3000" ;;
  *) echo "unknown setting $setting" >&2; exit 2 ;;
esac
table() {  # table NAME RUN...: the comparison and where each run came from, into $HERE/NAME.md
  local name=$1; shift
  { ppl-ssvae compare $SCORE "$@"; echo; python - "$@" <<'PY'
import json, sys
for run in sys.argv[1:]:
    env = json.load(open(f"{run}/config.json"))["environment"]
    edited = env.get("git_edited_files")
    state = "clean tree" if not env["git_dirty"] else (
        f"with edits to {', '.join(edited)}" if edited else "with edits, files not recorded")
    print(f"- {run.rsplit('/', 1)[-1]}: commit {env['git_commit'][:7]} ({state}), "
          f"CPU capability {env['cpu_capability']}, torch {env['torch']}, {env['threads']} thread(s)")
PY
  } | tee "$HERE/$name.md"
}
train() {  # train OUT ARGS...: train once; a finished run is left as it is
  local out=$1; shift
  # A run kept in runs/ beside this script (its best checkpoint and its scores, so that a
  # later session pairs new guides with it without training and scoring it again).
  local kept=$HERE/runs/${out##*/}
  if [ ! -e "$out" ] && [ -d "$kept" ]; then mkdir -p "$RUNS" && cp -r "$kept" "$out"; fi
  [ -f "$out/done" ] && return 0
  if [ -f "$out/checkpoint.pt" ]; then ppl-ssvae train --resume --out "$out" --no-progress "$@"
  else ppl-ssvae train --dataset fashion-mnist $args --seed "$seed" --out "$out" --no-progress "$@"; fi
  touch "$out/done"
}
if [ "$setting" = table ]; then
  shift; [ $# -ge 2 ] || { echo "usage: commands.sh table NAME RUN..." >&2; exit 2; }
  name=$1; shift
  table "$name" "$@"
  exit
fi
if [ "$setting" = init-from ]; then
  base=$RUNS/m2-s$seed-gaussian
  train "$base" --guide gaussian --epochs 10
  train "$RUNS/m2-s$seed-gaussian-15" --guide gaussian --epochs 15
  train "$RUNS/m2-s$seed-maf-from-gaussian" --guide maf --epochs 5 --init-from "$base"
  table "init-from-s$seed" "$RUNS/m2-s$seed-gaussian-15" "$RUNS/m2-s$seed-maf-from-gaussian" "$base"
  exit
fi
runs=()
for guide in $GUIDES; do
  out=$RUNS/$setting-s$seed-$guide${SUFFIX:-}
  train "$out" --guide "$guide" --epochs 10 ${GUIDE_ARG:+--guide-arg "$GUIDE_ARG"}
  ppl-ssvae compare $SCORE "$out" > /dev/null  # score now, so an interruption keeps it
  runs+=("$out")
done
table "${TABLE:-$setting-s$seed}" "${runs[@]}"
