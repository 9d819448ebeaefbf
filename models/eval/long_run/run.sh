#!/usr/bin/env bash
# Longer training of the shipped scan-to-scan VM-2 (issue 13, "far longer training"): continue
# vm2_scan2scan.h5 at its own lambda (1) and learning rate 1e-4 on the training subjects, one
# checkpoint per 100 steps, resumable across sessions; every checkpoint scored on the validation
# pairs with the network alone. Run from the repository root:
#   bash models/eval/long_run/run.sh /work/runs/s2s_long            # train (resumes if checkpoints exist)
#   bash models/eval/long_run/run.sh /work/runs/s2s_long score      # score the checkpoints, plot
set -euo pipefail
runs=${1:-runs/s2s_long}
if [ "${2:-train}" = train ]; then
  last=$(ls "$runs"/[0-9][0-9][0-9][0-9].h5 2>/dev/null | tail -1 || true)
  if [ -n "$last" ]; then start=(--load-model "$last"); else start=(--init-weights models/vm2_scan2scan.h5); fi
  python train.py --train-list models/splits/train.txt --atlas none --model vm2 --unet-downsize 2 \
      "${start[@]}" --lambda 1 --lr 1e-4 --epochs 200 --steps-per-epoch 100 --seed 7 --model-dir "$runs"
else
  for ckpt in models/vm2_scan2scan.h5 "$runs"/[0-9][0-9][0-9][0-9].h5; do
    name=$(basename "$ckpt" .h5)
    [ "$ckpt" = models/vm2_scan2scan.h5 ] && name=0000  # the start: step 0
    [ -f "models/eval/long_run/ckpt_$name/dice.csv" ] && continue
    python test.py --model "$ckpt" --test-list models/splits/val.txt --atlas none --optimize 0 \
        --out-dir "models/eval/long_run/ckpt_$name"
  done
  python models/eval/long_run/plot.py
fi
