#!/usr/bin/env bash
# Issue 31's comparison at few labels: M2 dense, M2 conv and M1+M2 through SSVAEClassifier
# against scikit-learn's semi-supervised baselines on the same splits (3 seeds, one thread).
#   bash results/few_labels/commands.sh digits     # or mnist-5k, fashion-mnist
set -euo pipefail
conv=
export OMP_NUM_THREADS=1
dataset=$1
case $dataset in
  digits)        labels=140;      epochs=60; m1_epochs=60; shape=[1,8,8] ;;  # ~10% of the 1437 training rows
  mnist-5k)      labels=100;      epochs=30; m1_epochs=30; shape=[1,28,28] ;;
  # Conv channels 16-32 here: the default 32-64 costs 6.8x a dense M2 step on 28x28
  # images, 16-32 3.0x (benchmarks/net_speed), which is what fits the CPU budget.
  fashion-mnist) labels=100,1000; epochs=5;  m1_epochs=10; shape=[1,28,28]; conv='net_args={"channels":[16,32]}' ;;
  *) echo "unknown dataset $dataset" >&2; exit 2 ;;
esac
name=few_labels_${dataset//-/_}
run() {  # run LABELS ARGS... --name PART: a part already written is kept, so the chain resumes
  local labels=$1 part=${*: -1}
  shift
  [ -f "results/$part/summary.csv" ] && return 0
  python -m experiments.sklearn_comparison --budget cpu --dataset "$dataset" --labels "$labels" "$@"
}
m1m2=(--epochs $((epochs + m1_epochs)) --model m1-m2 --model-arg m1_epochs=$m1_epochs)
run "$labels" --epochs "$epochs" --name "${name}_m2_dense"
run "$labels" --epochs "$epochs" --model-arg net=conv --model-arg "image_shape=$shape" ${conv:+--model-arg "$conv"} --name "${name}_m2_conv"
if [ "$dataset" = fashion-mnist ]; then
  # One M1+M2 folder per label count, so that each can run on its own core.
  parts=()
  for count in ${labels//,/ }; do
    run "$count" "${m1m2[@]}" --name "${name}_m1m2_$count"
    parts+=("results/${name}_m1m2_$count")
  done
  # Does longer training help M2 at 100 labels? Four times the dense part's steps.
  run 100 --epochs 20 --name "${name}_m2_dense_20epochs"
else
  run "$labels" "${m1m2[@]}" --name "${name}_m1m2"
  parts=("results/${name}_m1m2")
fi
python -m experiments.sklearn_comparison --merge "results/${name}_m2_dense" \
    "results/${name}_m2_conv" "${parts[@]}" --name "$name"
