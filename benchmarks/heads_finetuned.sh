#!/usr/bin/env bash
# The paper's threat model (a clean model finetuned on poisoned pairs) for benchmarks/heads.py: a clean
# tiny-vit-p8 trained 10 epochs on the clean world, then finetuned EPOCHS (2) epochs at lr 2e-4 on each
# poisoned copy that benchmarks/heads_models.sh wrote. Writes WORK_FT/{world,clean_world,data,models}.
#   OMP_WAIT_POLICY=PASSIVE bash benchmarks/heads_finetuned.sh runs/heads runs/heads_ft
set -euo pipefail
WORK=${1:-runs/heads}
FT=${2:-runs/heads_ft}
EPOCHS=${EPOCHS:-2}
W=$WORK/world
mkdir -p $FT/models $FT/data
ln -sfn $(realpath $W) $FT/world
ln -sfn $(realpath $WORK/clean_world) $FT/clean_world
[ -f $WORK/models/clean_base/model.safetensors ] && [ ! -f $WORK/models/clean_base/checkpoints/state.pt.tmp ] || \
  clipguard -q train $W/train/manifest.parquet --out $WORK/models/clean_base --model tiny-vit-p8 --epochs 10 --batch-size 64
for a in ${ATTACKS:-badnets blended sig badclip}; do
  [ -f $WORK/data/$a/manifest.parquet ] || { echo "skip $a: no poisoned copy"; continue; }
  ln -sfn $(realpath $WORK/data/$a) $FT/data/$a
  if [ ! -f $FT/models/$a/eval.json ]; then
    clipguard -q train $WORK/data/$a/manifest.parquet --out $FT/models/$a --model tiny-vit-p8 \
        --weights $WORK/models/clean_base/model.safetensors --epochs $EPOCHS --lr 2e-4 --warmup-steps 20 --batch-size 64
    clipguard -q eval $FT/models/$a $W/test/manifest.parquet --classes $W/classes.json \
        --attack $WORK/data/$a/attack.json > $FT/models/$a/eval.json
  fi
done
