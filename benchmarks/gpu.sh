#!/usr/bin/env bash
# Every GPU figure BENCHMARKS.md is waiting for, in one command, for a GPU machine that has PyTorch, timm,
# scikit-learn and scipy but no network (fastcore travels as a wheel).
#
#   bash benchmarks/gpu.sh wheels              # here, with PyPI: the wheels the GPU machine lacks -> .whl/
#   bash benchmarks/gpu.sh refs SRC            # here: the reference checkouts' Python files (SRC/STEGO, SRC/HP, ...) -> .refs/
#   bash benchmarks/gpu.sh run DIR             # there: results (JSON), a log and a summary -> DIR
#   bash benchmarks/gpu.sh run DIR cpu         # a dry run of the same commands, tiny sizes, on the CPU
#   bash benchmarks/gpu.sh run DIR cuda REFS   # the comparison with the reference code reads REFS (default .refs)
#   bash benchmarks/gpu.sh before REV...       # here: a copy of each commit's files -> .bench_<rev>/ (for `lease`)
#   bash benchmarks/gpu.sh lease DIR [cpu]     # there: a short lease (GPU_BUDGET seconds, default 420), see below
#
# `lease` fits a lease of a few minutes: the GPU measurements in order of priority (CUDA tests, MaskContrast's and
# HSC's steps, the four methods' steps, the Learner step, the comparison with the reference code), each bounded by
# what is left of the budget, while the CPU comparisons run beside them on the other half of the cores (a quiet
# 16-core machine, unlike a shared laptop): vs_reference on the CPU, and compare_commits between the folders
# BEFORE and AFTER (env; copies made by `gpu.sh before`) when both are set. Everything ends up in
# DIR/lease.tar.gz and DIR/lease_log.txt.
#
# .refs/ is git-ignored (the reference code is never committed): carry it to the GPU machine with the checkout.
# Without it the comparison with the reference code is skipped, and says so.
# Each benchmark runs under its own time limit and a failure is logged, not fatal, so that one broken or
# out-of-memory run does not cost the rest of a short GPU lease. Random backbone weights throughout (the
# cost of a step does not depend on the weights).
set -uo pipefail
ORIG_PWD=$PWD
cd "$(dirname "$0")/.."

wheels() {
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform any -d .whl "fastcore>=1.14,<1.15"
    ls -l .whl
}

refs() {   # copy the Python sources (and configs) of each reference checkout under SRC into .refs/, nothing else
    local src=${1:?usage: gpu.sh refs SRC (a folder holding STEGO/ HP/ SmooSeg/ EAGLE/ checkouts)}
    case $src in /*) ;; *) src=$ORIG_PWD/$src ;; esac
    for r in STEGO HP SmooSeg EAGLE; do
        if [ ! -d "$src/$r" ]; then echo "no $src/$r: skipped"; continue; fi
        (cd "$src/$r" && find . -name '*.py' -o -name '*.yml' -o -name '*.yaml' -o -name '*.json' | grep -v __pycache__ |
            while read -r f; do mkdir -p "$OLDPWD/.refs/$r/$(dirname "$f")"; cp "$f" "$OLDPWD/.refs/$r/$f"; done)
    done
    du -sh .refs
}

run() {
    local dir=${1:?usage: gpu.sh run DIR [cuda|cpu] [REFS]} dev=${2:-cuda} refs=${3:-.refs}
    mkdir -p "$dir"
    local log="$dir/gpu_log.txt" limit=300
    if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c 'import fastcore' 2>/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/usseg_site .whl/*.whl
        export PYTHONPATH=/tmp/usseg_site:${PYTHONPATH:-}
    fi
    export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    # sizes: the papers' (224 px, their batches) on the GPU; tiny ones for the CPU dry run
    local img=224 eig="" knn="" steps="--steps 5 --warmup 2" tsteps="--steps 5 --warmup 3" prec="fp32 bf16" comp="--compile"
    local vsr="--repeats 5"   # fp32 against the reference, plus usseg under bf16 autocast and torch.compile (the script's GPU default)
    if [ "$dev" = cpu ]; then
        img=32; eig="--batch 2 --grid 8 --dim 16 --repeats 1"; knn="--n-images 20 --size 32 --batch-size 10 --k 3"
        steps="--steps 1 --warmup 0 --batch-size 2"; tsteps=$steps; prec="fp32"; comp=""; limit=120
        vsr="--batch 2 --grid 14 --threads 1 --repeats 1 --warmup 0 --malloc glibc --variants bf16"
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
    if [ -d "$refs" ]; then
        local saved=$limit; [ "$dev" = cuda ] && limit=540   # four methods, each side, plus bf16 and compiled usseg
        step vs_reference python3 benchmarks/vs_reference.py --ref-root "$refs" --device "$dev" $vsr --out "$dir/vs_reference_$dev.json"
        limit=$saved
    else
        echo "== vs_reference: skipped, no reference checkouts in $refs (bash benchmarks/gpu.sh refs SRC makes them)" | tee -a "$log"
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
    elif 'methods' in d: print(p.name, [(m['method'], {n: {k[len('ratio_reference_over_'):]: v['median'] for k, v in t.items() if k.startswith('ratio_')}
                                                       for n, t in m.get('by_threads', {}).items()} or m.get('skipped') or m.get('error'))
                                       for m in d['methods']])
    else: print(p.name, {k: d[k] for k in ('seconds_total', 'seconds_graph', 'seconds_eigh', 'images_per_second_features') if k in d})
EOF
    echo "$failed failed" | tee -a "$log"
    return $((failed > 0))
}

before() {   # a copy of each commit's tracked files, for compare_commits on a machine without the git history
    for r in "$@"; do
        local d=.bench_$r; rm -rf "$d"; mkdir -p "$d"
        git archive "$r" | tar -x -C "$d" && echo "$r" > "$d/COMMIT" && echo "$d"
    done
}

lease() {
    local dir=${1:?usage: gpu.sh lease DIR [cpu]} dev=${2:-cuda} budget=${GPU_BUDGET:-420} refs=${REFS:-.refs}
    local work; work=$(mktemp -d); mkdir -p "$dir"
    local log="$dir/lease_log.txt" t_end=$((SECONDS + budget))
    if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c 'import fastcore' 2>/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/usseg_site .whl/*.whl
        export PYTHONPATH=/tmp/usseg_site:${PYTHONPATH:-}
    fi
    export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    local n; n=$(nproc); local gcpu="0-$((n/2 - 1))" ccpu="$((n/2))-$((n - 1))" pin=""
    command -v taskset >/dev/null && [ "$n" -ge 4 ] && pin=yes
    pinned() { local c=$1; shift; if [ -n "$pin" ]; then taskset -c "$c" "$@"; else "$@"; fi; }
    pack() { tar -czf "$dir/lease.tar.gz" -C "$work" . 2>/dev/null; }
    # sizes: the papers' on the GPU; tiny ones for the CPU dry run
    local steps="--steps 5 --warmup 2" prec="fp32 bf16" img=224 mc="--setting voc2012" hsc="--setting voc2012 --backbone resnet50_dilated" cpuargs=""
    if [ "$dev" = cpu ]; then
        steps="--steps 1 --warmup 0 --batch-size 2"; prec="fp32"; img=32; mc="--setting smoke --batch-size 2 --steps 1 --warmup 0"
        hsc="--setting smoke --steps 1 --warmup 0"; cpuargs="--batch 2 --grid 14 --threads 1 --repeats 1 --warmup 0 --malloc glibc"
    fi
    { python3 -c 'import torch, usseg; print("torch", torch.__version__, "| usseg", usseg.__version__, "| cuda", torch.cuda.is_available() and torch.cuda.get_device_name())'
      echo "cores $n, GPU side on $gcpu, CPU side on $ccpu (taskset: ${pin:-no})"; } 2>&1 | tee "$log"
    # the CPU side, in the background on the other cores
    local before=${BEFORE:-} after=${AFTER:-}
    ( if [ -d "$refs" ]; then
          pinned "$ccpu" timeout $((t_end - SECONDS - 15)) python3 benchmarks/vs_reference.py --ref-root "$refs" --device cpu $cpuargs \
              --out "$work/vs_reference_cpu.json" > "$work/vs_reference_cpu.log" 2>&1
          echo "vs_reference cpu: exit $?" >> "$work/cpu_side.txt"
      fi ) &
    local cpu1=$!
    ( if [ -n "$before" ] && [ "$before" != "$after" ]; then
          local cargs="--pairs 4 --steps 2 --warmup 1 --batch-size 4"; [ "$dev" = cpu ] && cargs="--pairs 1 --steps 1 --warmup 0 --batch-size 2 --image-size 32"
          for m in stego eagle; do   # one file per method: a method cut off by the budget does not lose the other
              pinned "$ccpu" timeout $((t_end - SECONDS - 15)) python3 benchmarks/compare_commits.py --before "$before" --after "$after" \
                  --methods $m $cargs --out "$work/before_after_$m.json" >> "$work/compare_commits.log" 2>&1
              echo "compare_commits $m $before $after: exit $?" >> "$work/cpu_side.txt"
          done
      fi ) &
    local cpu2=$! failed=0
    gstep() {   # gstep NAME LIMIT COMMAND...: a GPU measurement, bounded by LIMIT and by what is left of the budget
        local name=$1 lim=$2; shift 2
        local left=$((t_end - SECONDS - 15)); [ "$lim" -gt "$left" ] && lim=$left
        if [ "$lim" -lt 10 ]; then echo "== $name: skipped, the budget is spent" | tee -a "$log"; return; fi
        echo "== $name (limit ${lim} s): $*" | tee -a "$log"
        local t0=$SECONDS
        if pinned "$gcpu" timeout "$lim" "$@" >> "$work/gpu_steps.log" 2>&1; then echo "   ok, $((SECONDS - t0)) s" | tee -a "$log"
        else echo "   FAILED (exit $?), $((SECONDS - t0)) s" | tee -a "$log"; failed=$((failed + 1)); fi
        pack
    }
    gstep "import order (timm first)" 30 python3 -c 'import timm, usseg, warnings; print("timm first: ok", timm.__version__)'
    gstep "CUDA tests" 60 python3 -m pytest -q -p no:cacheprovider tests/test_cluster.py::test_cuda_if_available tests/test_metrics.py::test_cuda_update_if_available
    [ -f benchmarks/maskcontrast_step.py ] && gstep "maskcontrast step" 60 python3 benchmarks/maskcontrast_step.py --device "$dev" --dtype $prec $mc --out "$work/maskcontrast_step_$dev.json"
    [ -f benchmarks/hsc_step.py ] && gstep "hsc stages" 75 python3 benchmarks/hsc_step.py $hsc --device "$dev" --dtype $prec --out "$work/hsc_step_$dev.json"
    for m in stego smooseg eagle hp; do
        gstep "method_step $m" 45 python3 benchmarks/method_step.py --method $m --device "$dev" --precision $prec --image-size $img $steps --out "$work/method_step_${m}_$dev.json"
    done
    gstep train_step 40 python3 benchmarks/train_step.py --device "$dev" --precision $prec --image-size $img $steps --out "$work/train_step_$dev.json"
    [ -d "$refs" ] && [ "$dev" = cuda ] && gstep "vs_reference cuda" 120 python3 benchmarks/vs_reference.py --ref-root "$refs" --device cuda --repeats 3 --out "$work/vs_reference_cuda.json"
    # the CPU side gets what is left of the budget, then is stopped
    while { kill -0 $cpu1 2>/dev/null || kill -0 $cpu2 2>/dev/null; } && [ $SECONDS -lt $((t_end - 10)) ]; do sleep 2; done
    kill $cpu1 $cpu2 2>/dev/null; pkill -f 'benchmarks/(vs_reference|compare_commits|method_step).py' 2>/dev/null
    cat "$work/cpu_side.txt" 2>/dev/null | tee -a "$log"
    echo "$failed failed, $((SECONDS)) s" | tee -a "$log"
    pack; ls -la "$dir"
}

case "${1:-}" in
    wheels) wheels ;;
    refs) shift; refs "$@" ;;
    run) shift; run "$@" ;;
    before) shift; before "$@" ;;
    lease) shift; lease "$@" ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
esac
