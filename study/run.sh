#!/usr/bin/env bash
# The comparison study of docs/results.md (issue 10), with supuq's own commands only. Run from the project
# root with the venv active or SUPUQ pointing at the CLI; about 1 hour on 2 CPU cores.
# Every method gets the same data, budget, seeds and tuning budget (8 trials of its own key parameters).
set -euo pipefail
SUPUQ=${SUPUQ:-.venv/bin/supuq}
CFG=${STUDY_CONFIG:-configs/synthetic-study.yaml}
SPACES=${STUDY_SPACES:-sweep}
TAG=${STUDY_TAG:-study}
start=$(date +%s)
$SUPUQ sweep --dataset synthetic --config $CFG --space $SPACES/study-supervised.yaml --name $TAG-supervised
$SUPUQ sweep --dataset synthetic --config $CFG --space $SPACES/study-kohl.yaml --name $TAG-kohl \
  --set model.method=kohl --set model.weight_noise.enabled=false --set loss.gamma=0
$SUPUQ sweep --dataset synthetic --config $CFG --space $SPACES/study-kendall_gal.yaml --name $TAG-kendall_gal \
  --set model.method=kendall_gal
$SUPUQ best --dataset synthetic --sweep $TAG-supervised --retrain --seeds ${STUDY_SEEDS:-3} \
  --baseline-sweep kohl=$TAG-kohl --baseline-sweep kendall_gal=$TAG-kendall_gal | tee study/retrain.log
run=$(grep -o 'retrain run [0-9a-f]\{32\}' study/retrain.log | tail -1 | cut -d' ' -f3)
minutes=$(( ($(date +%s) - start) / 60 ))
$SUPUQ results "$run" --out ${STUDY_OUT:-docs/results.md} --wall-time "${minutes} min on $(nproc) CPU cores" \
  --sweep-of supervised=$TAG-supervised --sweep-of kohl=$TAG-kohl --sweep-of kendall_gal=$TAG-kendall_gal \
  --command "bash study/run.sh" \
  --command "# or step by step: supuq sweep ... (three sweeps, see study/run.sh), supuq best --retrain ..., then" \
  --command "supuq results $run --out docs/results.md --sweep-of supervised=$TAG-supervised --sweep-of kohl=$TAG-kohl --sweep-of kendall_gal=$TAG-kendall_gal"
