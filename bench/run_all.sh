#!/usr/bin/env bash
# Every benchmark quoted in BENCHMARKS.md, in order (about 2.5 h on a 2-core CPU). Outputs in $OUT.
# Needs the default model and the Brown corpus (make setup). Usage: bash bench/run_all.sh [OUT]
set -euo pipefail
OUT="${1:-bench/results}"
mkdir -p "$OUT"
PY="${PY:-.venv/bin/python}"
FN="${FN:-.venv/bin/fnprune}"
T="/usr/bin/time -v"
command -v /usr/bin/time >/dev/null || T=""
# 1. the whole analysis (capture + CanICA), paper's 128 components and the default, wall time and peak RSS
$T "$FN" analyze --model smollm2-135m --corpus brown --texts 40 --max-tokens 512 --components 128 \
    --mode per-layer --runs 1 --seed 0 --out "$OUT/run_seed0" 2>&1 | tail -30 > "$OUT/analyze.log"
$T "$FN" analyze --model smollm2-135m --corpus brown --texts 40 --max-tokens 512 \
    --mode per-layer --runs 1 --seed 0 --out "$OUT/run_default" 2>&1 | tail -30 > "$OUT/analyze_default.log"
# 2. fnprune's CanICA vs the faithful algorithm on the same activations; seed stability
"$PY" bench/capture_default.py "$OUT/acts40" > "$OUT/capture.log" 2>&1
"$PY" bench/bench_canica.py "$OUT/acts40" --layers 5,10,15,20,25 --out "$OUT/canica.json" > "$OUT/canica.log" 2>&1
# both of the authors' code paths and fnprune, timed in one run; the components sweep behind the default
"$PY" bench/bench_anchors.py "$OUT/acts40" --layers 5,20 --out "$OUT/anchors.json" > "$OUT/anchors.log" 2>&1
"$PY" bench/bench_components.py "$OUT/acts40" --layers 3,5,6,10,20 --variants '{"k128 n8 (previous default)": {"n_components": 128, "n_init": 8}, "k64 n16": {"n_components": 64}, "k48 n8": {"n_components": 48, "n_init": 8}, "k48 n16": {"n_components": 48}, "k32 n16 (default)": {}, "k24 n16": {"n_components": 24}}' \
    --out "$OUT/components_sweep.json" > "$OUT/components_sweep.log" 2>&1
"$PY" bench/bench_components.py "$OUT/acts40" --layers 4,7,8,9,11,12,13,14,15,16,17,18,19,21,22,23,24,25,26,27 \
    --variants '{"k128 n8 (previous default)": {"n_components": 128, "n_init": 8}, "k32 n16 (default)": {}}' \
    --out "$OUT/components_all.json" > "$OUT/components_all.log" 2>&1
# 3. the pruning recipe: validation (defaults), held-out Brown + pydoc with bootstrap intervals, fidelity,
#    repair on/off, allocation controls, the 20 most stable networks chosen; what the repair costs
$T "$PY" bench/bench_recipe.py "$OUT/recipe" > "$OUT/recipe.log" 2>&1
"$PY" bench/recipe_tables.py "$OUT/recipe" > "$OUT/recipe_tables.md"
"$PY" bench/bench_repair_cost.py > "$OUT/repair_cost.json" 2> "$OUT/repair_cost.log"
"$PY" bench/bench_recipe.py "$OUT/recipe32" --stages analysis,unconstrained,chosen > "$OUT/recipe32.log" 2>&1
# 3b. this round's default: chosen on validation (obs, 120 calibration documents), then held-out + chosen networks
"$PY" bench/bench_default_choice.py --split validation --candidates flap:40,flap:120,obs:120 > "$OUT/default_choice.log" 2>&1
"$PY" bench/bench_recipe.py "$OUT/recipe32" --stages default-test,default-chosen > "$OUT/recipe32_default.log" 2>&1
"$PY" bench/recipe_tables.py "$OUT/recipe32" > "$OUT/recipe32_tables.md"
# 4. the map endpoint and the browser on that analysis
"$PY" bench/bench_api.py "$OUT/run_seed0" --json "$OUT/api.json" > "$OUT/api.log" 2>&1
"$PY" bench/bench_frontend.py --run-dir "$OUT/run_seed0" --json "$OUT/frontend.json" > "$OUT/frontend.log" 2>&1
# 5b. a first visit: Quick demo -> analysis -> prune with the defaults -> model zip, in headless Chromium
"$PY" bench/bench_quick_demo.py --second --json "$OUT/quick_demo.json" > "$OUT/quick_demo.log" 2>&1
# 5. on a machine with a GPU: every CUDA path (capture, CanICA, whole-model, pruning), checked against the CPU
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    "$PY" bench/gpu_check.py --out "$OUT/gpu_check.json" > "$OUT/gpu_check.log" 2>&1
fi
# 11. speed where people run models: dense vs obs 20% / 30% (per-layer and uniform) in llama.cpp and transformers
"$PY" bench/bench_speed.py build --work "$OUT/speed" > "$OUT/speed_build.log" 2>&1
"$PY" bench/bench_speed.py time --work "$OUT/speed" --out "$OUT/speed.json" > "$OUT/speed.log" 2>&1
# the dense model's held-out perplexity under each protocol the tables use
"$PY" bench/bench_dense_ppl.py --out "$OUT/dense_ppl_protocols.json" > "$OUT/dense_ppl.log" 2>&1
"$PY" bench/check_numbers.py
echo "results in $OUT"
