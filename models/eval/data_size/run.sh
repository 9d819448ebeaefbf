#!/usr/bin/env bash
# Training-set size (issue 18; the papers' data-size experiment): scan-to-scan VM-2 trained from
# scratch on the first 2, 4 and 6 training subjects (models/splits/train_{2,4}.txt, train.txt),
# the same initial weights (seed 3), learning rate, lambda and number of steps; every 100-step
# checkpoint scored on the validation pairs (sub-07 <-> sub-08) with the network alone.
# From scratch, not fine-tuned: every shipped model saw all six subjects. Two variants:
#   n1aug   one subject (train_1.txt) paired with itself, each side augmented on its own
#           (train.py --augment: affine jitter, smooth deformation, flip, gamma, bias, noise);
#   n6synth the six subjects' label maps and the 20 SynthSeg maps, images synthesised from them
#           (train.py --synth: SynthMorph-style, Dice on the warped labels, no image seen);
#   vm1_n6  VM-1 (the narrower decoder) on the six subjects: the comparison with VM-2 (n6).
# Run from the repository root (resumes; RUNS picks the runs, e.g. RUNS="n1aug n6synth"):
#   STEPS=600 bash models/eval/data_size/run.sh /work/runs/data_size          # train, score, plot
#   STEPS=600 bash models/eval/data_size/run.sh /work/runs/data_size score    # score and plot only
set -euo pipefail
runs=${1:-runs/data_size}
steps=${STEPS:-300}
synth_maps=${SYNTH_MAPS:-../shared/data/synthseg_label_maps}
for name in ${RUNS:-n2 n6 n4 vm1_n6 n1aug n6synth}; do
  arch=vm2
  case $name in
    n1aug) list=models/splits/train_1.txt; extra=(--augment) ;;
    vm1_n6) list=models/splits/train.txt; extra=(); arch=vm1 ;;
    n6synth) list=models/splits/train.txt; extra=(--synth "$synth_maps") ;;
    n6) list=models/splits/train.txt; extra=() ;;
    *) list=models/splits/train_${name#n}.txt; extra=() ;;
  esac
  dir="$runs/$name"
  if [ "${2:-train}" = train ]; then
    last=$(ls "$dir"/[0-9][0-9][0-9][0-9].h5 2>/dev/null | tail -1 || true)
    start=()
    [ -n "$last" ] && start=(--load-model "$last")
    [ "$last" != "$dir/$(printf %04d $((steps / 100))).h5" ] && \
      python train.py --train-list "$list" --atlas none --model "$arch" --unet-downsize 2 "${start[@]}" "${extra[@]}" \
          --lambda 1 --lr 5e-4 --epochs $((steps / 100)) --steps-per-epoch 100 --seed 3 --model-dir "$dir"
  fi
  for ckpt in "$dir"/[0-9][0-9][0-9][0-9].h5; do
    [ -f "$ckpt" ] || continue
    out="models/eval/data_size/${name}_$(basename "$ckpt" .h5)"
    [ -f "$out/dice.csv" ] || python test.py --model "$ckpt" --test-list models/splits/val.txt --atlas none \
        --optimize 0 --out-dir "$out"
  done
done
python models/eval/data_size/plot.py
