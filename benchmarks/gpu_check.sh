#!/bin/bash
# The device checks of issue 13 as they ran on the lent H200 (results in benchmarks/results/gpu_scan.md,
# embed_throughput_gpu*.md, sharded_scan_gpu.log, gpu_tests_issue13.txt). On a machine without the
# package deps, carry their wheels in .whl/ (open_clip_torch, ftfy, wcwidth, faiss-cpu): they are installed first.
if ls .whl/*.whl >/dev/null 2>&1; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1; fi
export PYTHONPATH=$PWD/src:$PWD/benchmarks:$PWD/tests:/tmp/site PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests/detect tests/distributed/test_scan.py | tail -3
timeout 200 python3 benchmarks/gpu_scan.py --out $OUT | tail -14
timeout 330 python3 benchmarks/embed_throughput.py --device cuda --n ${N_PAIRS:-32768} --workers 15 --out $OUT | grep -v "^|"
t0=$(date +%s)
timeout 120 python3 - > $OUT/sharded.log 2>&1 <<'P'
import time, json
from scale import generate
from pathlib import Path
t=time.perf_counter(); emb=generate(Path("/tmp/emb1m"), 1_000_000, 512); print("generate", round(time.perf_counter()-t,1))
from clipguard.distributed import scan_sharded
for rep in range(2):
    t=time.perf_counter(); r=scan_sharded(emb, f"/tmp/s{rep}", detectors=["dao"], reference="batch", device="cuda"); s=time.perf_counter()-t
    run=json.load(open(r.run_json)); print("sharded cuda", rep, round(s,2), run["timings_s"], run["distributed"]["stage_seconds"])
P
echo "sharded rc $? in $(( $(date +%s) - t0 )) s" >> $OUT/sharded.log
grep -v WARNING $OUT/sharded.log | tail -6
