#!/usr/bin/env bash
# Regularisation sensitivity (CVPR 2018, Dice against lambda), fine-tuned instead of trained from
# scratch (CPU time): each lambda starts from the shipped vm2_scan2scan.h5 (trained with lambda 1)
# and takes the same 200 steps (seed 0) on the training subjects; each is then scored on the
# validation pairs with the network alone. Run from the repository root:
#   bash models/eval/lambda/run.sh /path/to/runs
set -euo pipefail
runs=${1:-runs/lambda}
for lam in 0 0.1 0.5 1 2 4 8; do
  python train.py --train-list models/splits/train.txt --atlas none --model vm2 --unet-downsize 2 \
      --init-weights models/vm2_scan2scan.h5 --lambda "$lam" --lr 1e-4 --epochs 2 --steps-per-epoch 100 \
      --seed 0 --model-dir "$runs/lam_$lam"
  python test.py --model "$runs/lam_$lam/0002.h5" --test-list models/splits/val.txt --atlas none \
      --optimize 0 --out-dir "models/eval/lambda/lam_$lam"
done
python models/eval/lambda/plot.py
