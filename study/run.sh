#!/usr/bin/env bash
# The comparison study of docs/results.md, with supuq's own commands only. Run from the project root with the
# venv active or SUPUQ pointing at the CLI; about an hour on 2 CPU cores.
# Every method gets the same data, budget, seeds and tuning budget (sweep/study-<method>.yaml: 6 trials of the
# learning rate and its own key parameters, ASHA); then the best trial of each is retrained over 3 seeds.
# A sweep that already exists under ray_results/ (an interrupted study run again) is resumed, not started over.
# STUDY_WALL_NOTE: words appended to the recorded wall time (e.g. the minutes of an earlier, interrupted run).
set -euo pipefail
SUPUQ=${SUPUQ:-.venv/bin/supuq}
CFG=${STUDY_CONFIG:-configs/synthetic-study.yaml}
SPACES=${STUDY_SPACES:-sweep}
TAG=${STUDY_TAG:-study}
METHODS=${STUDY_METHODS:-"supervised kohl kendall_gal ssn phiseg soft_label"}
start=$(date +%s)
baselines=()
sweeps=()
for method in $METHODS; do
  fixed=(--set model.method=$method)
  [ "$method" = kohl ] && fixed+=(--set model.weight_noise.enabled=false --set loss.gamma=0)
  if [ -f ray_results/$TAG-$method/supuq_sweep.json ]; then
    $SUPUQ sweep --resume $TAG-$method
  else
    $SUPUQ sweep --dataset synthetic --config $CFG --space $SPACES/study-$method.yaml --name $TAG-$method "${fixed[@]}"
  fi
  sweeps+=(--sweep-of $method=$TAG-$method)
  [ "$method" = supervised ] || baselines+=(--baseline-sweep $method=$TAG-$method)
done
$SUPUQ best --dataset synthetic --sweep $TAG-supervised --retrain --seeds ${STUDY_SEEDS:-3} "${baselines[@]}" \
  | tee study/retrain.log
run=$(grep -o 'retrain run [0-9a-f]\{32\}' study/retrain.log | tail -1 | cut -d' ' -f3)
minutes=$(( ($(date +%s) - start) / 60 ))
$SUPUQ results "$run" --out ${STUDY_OUT:-docs/results.md} --wall-time "${minutes} min on $(nproc) CPU cores${STUDY_WALL_NOTE:+ $STUDY_WALL_NOTE}" \
  "${sweeps[@]}" --command "bash study/run.sh" \
  --command "# or step by step: one supuq sweep per method (see study/run.sh), supuq best --retrain ..., then" \
  --command "supuq results $run --out docs/results.md ${sweeps[*]}"
