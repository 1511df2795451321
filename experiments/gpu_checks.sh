#!/usr/bin/env bash
# The GPU checks and runs in one go, on a machine with one GPU, inside a wall-clock budget:
#
#   bash experiments/gpu_checks.sh OUT_DIR DATA_DIR BUDGET_SECONDS
#
# 1. cuDNN attention against a float64 reference   (experiments.gpu_check --part kernels)
# 2. which attention each model's train step runs   (experiments.gpu_check --part models)
# 3. the attention benchmark in bfloat16           (experiments.bench_attention)
# 4. the Multi30k Transformer De->En, its whole 10-epoch schedule in bfloat16, and its
#    test BLEU (greedy)
# 5. CIFAR-10 ResNet-18 on the anchor's recipe (configs/cifar10_resnet.py), its cosine
#    schedule shortened to the whole epochs that fit what is left of the budget at the
#    input pipeline's measured rate (the recorded command says how many)
#
# DATA_DIR holds multi30k/ and cifar10_jpg/ (as ../shared/data). Each part runs under its
# own time limit and a failed part does not stop the next. OUT_DIR gets log.txt, device.txt,
# the checks' JSON and runs.tar.gz (the run folders without checkpoints, refreshed after
# each run, so a stopped call still returns the finished runs).
set -uo pipefail
OUT=$1 DATA=$2 BUDGET=$3
RUNS=${RUNS:-/tmp/attn_jax_gpu_runs}
SMOKE=${SMOKE:-}    # e.g. SMOKE="--config.num_steps=8 --config.eval_every=4": a quick try on a CPU
mkdir -p "$OUT" "$RUNS"
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/log.txt"; }
part() {   # part NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2 t0; shift 2; t0=$(date +%s)
  (( limit > $(left) )) && limit=$(left)
  if (( limit < 20 )); then log "$name: skipped, ${limit}s left"; return 1; fi
  log "$name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/log.txt" | tail -n 400 > "/tmp/$name.tail"
  local rc=${PIPESTATUS[0]}
  log "$name: exit $rc after $(( $(date +%s) - t0 ))s"
  tar czf "$OUT/runs.tar.gz" -C "$RUNS" --exclude=checkpoints --exclude=tensorboard . 2>/dev/null
  return "$rc"
}
export PYTHONUNBUFFERED=1
{ nvidia-smi; python -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', \
  flax.__version__, 'optax', optax.__version__, jax.devices())"; } > "$OUT/device.txt" 2>&1

part kernels 90 python -m experiments.gpu_check --part kernels \
  --out "$OUT/gpu_kernels.json"
part models 120 python -m experiments.gpu_check --part models \
  --out "$OUT/gpu_models.json"
part bench 120 python -m experiments.bench_attention --dtype bfloat16 \
  --sizes 4096,16384 --batches 1 --peers default,xla,flax --dense-max-n 16384 \
  --dense-max-n-bwd 16384 --rss '' --out "$OUT/bench_attention_gpu.json"

M30K=$RUNS/m30k_tr_de_en_gpu_bf16
part m30k 240 python -m experiments.train \
  --config configs/multi30k_transformer.py:de_en --workdir "$M30K" \
  --config.data.path="$DATA/multi30k" --config.dtype=bfloat16 $SMOKE
part m30k_test 90 python -m experiments.evaluate \
  --config configs/multi30k_transformer.py:de_en --workdir "$M30K" \
  --config.data.path="$DATA/multi30k" --config.dtype=bfloat16 --select=bleu_lower \
  --config.data.eval_split=test_2016_flickr --beam=1

# CIFAR-10: whole epochs (391 steps of 128) that fit 80% of what is left after ~60 s of
# start-up, compilation and evaluation, at the pipeline's rate.
part cifar_pipeline 90 python -m experiments.gpu_check --part pipeline \
  --config configs/cifar10_resnet.py --data "$DATA/cifar10_jpg"
rate=$(grep -o '"batches_per_s": [0-9.]*' "/tmp/cifar_pipeline.tail" | tail -1 | awk '{print $2}')
epochs=$(python -c "print(max(0, int(${rate:-0} * 0.8 * ($(left) - 60) / 391)))")
log "cifar: pipeline ${rate:-?} batches/s, $(left)s left -> $epochs epochs"
if (( epochs >= 1 )); then
  steps=$(( epochs * 391 ))
  part cifar10_resnet "$(left)" python -m experiments.train \
    --config configs/cifar10_resnet.py --workdir "$RUNS/cifar10_resnet_${epochs}ep_gpu" \
    --config.data.path="$DATA/cifar10_jpg" --config.num_steps=$steps \
    --config.eval_every=$(( (epochs / 4 > 0 ? epochs / 4 : 1) * 391 )) \
    --config.checkpoint_every=$steps $SMOKE
fi
log "done, $(left)s of ${BUDGET}s left"
