#!/usr/bin/env bash
# Every GPU figure BENCHMARKS.md is waiting for, in one command, for a GPU machine that has PyTorch, timm,
# scikit-learn and scipy but no network (fastcore travels as a wheel).
#
#   bash benchmarks/gpu.sh wheels              # here, with PyPI: the wheels the GPU machine lacks -> .whl/
#   bash benchmarks/gpu.sh run DIR             # there: results (JSON), a log and a summary -> DIR
#   bash benchmarks/gpu.sh run DIR cpu         # a dry run of the same commands, tiny sizes, on the CPU
#
# Each benchmark runs under its own time limit and a failure is logged, not fatal, so that one broken or
# out-of-memory run does not cost the rest of a short GPU lease. Random backbone weights throughout (the
# cost of a step does not depend on the weights).
set -uo pipefail
cd "$(dirname "$0")/.."

wheels() {
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform any -d .whl "fastcore>=1.14,<1.15"
    ls -l .whl
}

run() {
    local dir=${1:?usage: gpu.sh run DIR [cuda|cpu]} dev=${2:-cuda}
    mkdir -p "$dir"
    local log="$dir/gpu_log.txt" limit=300
    if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c 'import fastcore' 2>/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/usseg_site .whl/*.whl
        export PYTHONPATH=/tmp/usseg_site:${PYTHONPATH:-}
    fi
    export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    # sizes: the papers' (224 px, their batches) on the GPU; tiny ones for the CPU dry run
    local img=224 eig="" knn="" steps="--steps 5 --warmup 2" tsteps="--steps 5 --warmup 3" prec="fp32 bf16" comp="--compile"
    if [ "$dev" = cpu ]; then
        img=32; eig="--batch 2 --grid 8 --dim 16 --repeats 1"; knn="--n-images 20 --size 32 --batch-size 10 --k 3"
        steps="--steps 1 --warmup 0 --batch-size 2"; tsteps=$steps; prec="fp32"; comp=""; limit=120
    fi
    python3 -c 'import torch, usseg; print("torch", torch.__version__, "| usseg", usseg.__version__, "| cuda", torch.cuda.is_available() and torch.cuda.get_device_name())' 2>&1 | tee "$log"
    local failed=0
    step() {   # step NAME COMMAND...: one benchmark under its time limit; its output goes to the log
        echo "== $1: ${*:2}" | tee -a "$log"
        local t0=$SECONDS
        if timeout "$limit" "${@:2}" >>"$log" 2>&1; then echo "   ok, $((SECONDS - t0)) s" | tee -a "$log"
        else echo "   FAILED (exit $?), $((SECONDS - t0)) s: see $log" | tee -a "$log"; failed=$((failed + 1)); fi
    }
    step train_step python3 benchmarks/train_step.py --device "$dev" --precision $prec $comp --image-size $img \
        $tsteps --out "$dir/train_step_$dev.json"
    for m in stego smooseg eagle hp; do
        step "method_step $m" python3 benchmarks/method_step.py --method $m --device "$dev" --precision $prec \
            --image-size $img $steps --out "$dir/method_step_${m}_$dev.json"
    done
    if [ "$dev" = cuda ]; then   # HP at its paper batch (64) may not fit; batch 16 is the CPU table's size
        step "method_step hp batch 16" python3 benchmarks/method_step.py --method hp --device cuda --precision $prec \
            --batch-size 16 $steps --out "$dir/method_step_hp_b16_cuda.json"
    fi
    if [ "$dev" = cuda ]; then hsc="--setting voc2012 --backbone resnet50_dilated --steps 5 --warmup 2"
    else hsc="--setting smoke --steps 1 --warmup 0"; fi
    step hsc_step python3 benchmarks/hsc_step.py --device "$dev" --dtype $prec $hsc --out "$dir/hsc_step_$dev.json"
    step eicue python3 benchmarks/eicue.py --device "$dev" $eig --out "$dir/eicue_$dev.json"
    step knn_mining python3 benchmarks/knn_mining.py --device "$dev" $knn --out "$dir/knn_mining_$dev.json"
    python3 - "$dir" <<'EOF' 2>&1 | tee "$dir/gpu_summary.txt"
import json, sys
from pathlib import Path
for p in sorted(Path(sys.argv[1]).glob('*.json')):
    d = json.loads(p.read_text())
    rows = d.get('results')
    if rows: print(p.name, [(r.get('precision'), r.get('compile'), r.get('img_per_s'), r.get('sec_per_step')) for r in rows])
    else: print(p.name, {k: d[k] for k in ('seconds_total', 'seconds_graph', 'seconds_eigh', 'images_per_second_features') if k in d})
EOF
    echo "$failed failed" | tee -a "$log"
    return $((failed > 0))
}

case "${1:-}" in
    wheels) wheels ;;
    run) shift; run "$@" ;;
    *) sed -n '2,10p' "$0"; exit 2 ;;
esac
