#!/bin/bash
# The device check of issue 9 (perturbation probe): the DAO paper's setting at the gpu preset's size (long-tailed
# world, 100,000 pairs, rare target, 0.1 % SIG and BadNets, tiny-rn 10 epochs), each cell's model probed while in
# memory (panel.py --probe), then the probe's throughput at real size (ViT-B-32, random weights). The first run, with
# --modes batch auto, reached the 430 s limit before the auto scans; the per-batch scan alone fits.
# Results: benchmarks/results/perturbation_probe_gpu.md, probe_throughput_gpu.md. On a machine without the package
# deps, carry their wheels in .whl/ (open_clip_torch, ftfy, wcwidth, faiss-cpu): they are installed first.
if ls .whl/*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1; fi
export PYTHONPATH=$PWD/src:$PWD/benchmarks:/tmp/site PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
t0=$(date +%s)
timeout ${PANEL_S:-430} python3 benchmarks/panel.py --preset ${PRESET:-gpu} --device ${DEVICE:-cuda} --worlds longtail-rare --rates ${RATE:-0.001} \
    --attacks sig badnets --epochs ${EPOCHS:-10} --modes batch --probe --loader-workers 5 --jobs 2 --threads 3 \
    --work /tmp/pg --out $OUT 2>&1 | grep -v -i warn | tee $OUT/panel.log
echo "panel rc ${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" | tee -a $OUT/panel.log
for c in /tmp/pg/cells/*/; do cp $c/result.json $OUT/$(basename $c)_result.json 2>/dev/null; done
timeout 40 python3 benchmarks/perturbation_probe.py --panel /tmp/pg --work /tmp/pg/probe --out $OUT 2>&1 | grep -v -i warn | tail -2
timeout ${THROUGHPUT_S:-90} python3 benchmarks/probe_throughput.py --device cuda --n 8192 --workers 15 --out $OUT \
    --work /tmp/pt 2>&1 | grep -v -i warn | tail -7
