#!/usr/bin/env bash
# The backdoored tiny ViTs of benchmarks/heads.py (issue 11): one world, four attacks at 5 %, tiny-vit-p8
# trained 10 epochs on each poisoned copy (about 10 min a model on 2 CPU cores), and a disjoint clean world.
# Resumable: a finished model (eval.json beside it) is skipped.
#   OMP_WAIT_POLICY=PASSIVE bash benchmarks/heads_models.sh runs/heads [shapes|longtail]
#   (env: ATTACKS="badnets sig", EPOCHS=10, TARGET=name, BADCLIP_PATCH=trigger.png)
set -euo pipefail
WORK=${1:-runs/heads}
WORLD=${2:-shapes}
EPOCHS=${EPOCHS:-10}
W=$WORK/world
if [ "$WORLD" = longtail ]; then SIZE="--world longtail --n-concepts 64 --n-train 20000 --n-test 2000"; else SIZE="--n-train 20000 --n-test 2000"; fi
[ -f $W/classes.json ] || clipguard -q synth --out $W $SIZE --seed 0
[ -f $WORK/clean_world/classes.json ] || clipguard -q synth --out $WORK/clean_world ${SIZE/--n-train 20000 --n-test 2000/--n-train 2000 --n-test 10} --seed 1
TARGET=${TARGET:-$(python -c "import json,sys; c=json.load(open('$W/classes.json'))['classes']; print('star' if 'star' in c else c[0])")}
declare -A PARAMS=([badnets]="--param size=8 --param cell=2" [blended]="--param alpha=0.2" [sig]="")
# BadCLIP: the patch optimised against a clean model (a surrogate: `clipguard badclip CLEAN_MODEL MANIFEST --out DIR`)
if [ -n "${BADCLIP_PATCH:-}" ]; then PARAMS[badclip]="--param patch=$BADCLIP_PATCH"; fi
for a in ${ATTACKS:-badnets blended sig badclip}; do
  [ -n "${PARAMS[$a]+set}" ] || { echo "skip $a (set BADCLIP_PATCH=trigger.png)"; continue; }
  [ -f $WORK/data/$a/manifest.parquet ] || clipguard -q poison $W/train/manifest.parquet --out $WORK/data/$a \
      --attack $a ${PARAMS[$a]} --rate 0.05 --target "$TARGET" --classes $W/classes.json
  if [ ! -f $WORK/models/$a/eval.json ]; then
    clipguard -q train $WORK/data/$a/manifest.parquet --out $WORK/models/$a --model tiny-vit-p8 --epochs $EPOCHS --batch-size 64
    clipguard -q eval $WORK/models/$a $W/test/manifest.parquet --classes $W/classes.json \
        --attack $WORK/data/$a/attack.json > $WORK/models/$a/eval.json
  fi
done
