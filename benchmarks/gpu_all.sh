#!/usr/bin/env bash
# One device call: the peers and tunesmith, both shapes (Qwen2.5-0.5B, Llama-3.2-1B; random weights
# from their configs), full and LoRA, with the correctness gates, inside a time budget (~9 min).
#
#   benchmarks/gpu_all.sh --prepare     # HERE, before the device call: copy the peers script and the
#                                       # pure-Python wheels the GPU machine lacks (untracked: they travel)
#   benchmarks/gpu_all.sh               # ON THE GPU MACHINE: writes $OUT (or benchmarks/out)/results.{jsonl,json,md}
#   benchmarks/gpu_all.sh --dry-run     # the whole script on the CPU, tiny shapes, 2 steps (a smoke check)
#
# Budget: GPU_ALL_BUDGET_S seconds in all (default 510). Every piece runs under `timeout` with what is
# left, most important first (ours on both shapes, full then LoRA; then the peers; then ours on SDPA as
# the attention comparison), and each result is appended to results.jsonl the moment it exists, so a
# piece cut short costs only itself. The GPU machines have no trl/datasets (TRL's peers are skipped, and
# the table says so) and no liger-kernel unless its wheel was carried by --prepare.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
MODE=gpu
case "${1:-}" in
  --dry-run) MODE=dry ;;
  --prepare) MODE=prepare ;;
  "") ;;
  *) echo "usage: $0 [--dry-run|--prepare]" >&2; exit 2 ;;
esac

PEERS_DIR="$REPO/benchmarks/peers"
WHEELS_DIR="$REPO/benchmarks/wheels"
if [ "$MODE" = prepare ]; then
  mkdir -p "$PEERS_DIR" "$WHEELS_DIR"
  cp "$REPO/../shared/bench/peers_gpu.py" "$PEERS_DIR/" && echo "peers script copied to $PEERS_DIR"
  # Pure-Python wheels only (flash-attn has no usable wheel; trl needs datasets -> pyarrow, xxhash: native).
  python -m pip download --no-deps -d "$WHEELS_DIR" "liger-kernel>=0.5" && ls -la "$WHEELS_DIR"
  exit 0
fi

OUT_DIR="${OUT:-$REPO/benchmarks/out}"
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.jsonl"
LOG="$OUT_DIR/gpu_all.log"
: > "$RESULTS"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
START=$(date +%s)

if [ "$MODE" = dry ]; then
  BUDGET=${GPU_ALL_BUDGET_S:-600}
  SHAPES=${GPU_ALL_SHAPES:-"tiny tiny"}  # both shape slots, tiny (the smoke test runs one)
  OURS_ARGS=(--device cpu --steps 2 --warmup 1 --tokens-per-step 512 --max-len 256 --gate-steps 3 --no-compile)
  PEERS_ARGS=(--steps 2 --warmup 1 --tokens-per-step 512 --max-len 256)
  PEER_VARIANTS="hf-padded"
else
  BUDGET=${GPU_ALL_BUDGET_S:-510}
  SHAPES="qwen2.5-0.5b llama-3.2-1b"
  OURS_ARGS=(--device cuda --steps 20 --warmup 5 --gate-steps 30)
  PEERS_ARGS=(--steps 20 --warmup 5)
  PEER_VARIANTS="hf-padded"
fi

log() { echo "[gpu_all $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }
note() { python - "$RESULTS" "$@" <<'EOF'
import json, sys
path, kind, text = sys.argv[1], sys.argv[2], " ".join(sys.argv[3:])
with open(path, "a", encoding="utf-8") as handle:
    handle.write(json.dumps({"side": "note", "kind": kind, "text": text}) + "\n")
EOF
}
# run SECONDS_CAP LABEL COMMAND...: under timeout with min(cap, what is left); skipped when under 20 s left.
run() {
  local cap=$1 label=$2; shift 2
  local budget; budget=$(left)
  if [ "$budget" -lt 20 ]; then log "skip $label: budget spent"; note skipped "$label: budget spent"; return 0; fi
  [ "$cap" -lt "$budget" ] && budget=$cap
  log "start $label (limit ${budget}s)"
  timeout --signal=TERM --kill-after=10 "$budget" "$@" 2>&1 | tee -a "$LOG" | grep -E "^(RESULT|FAILED|\||running)" || true
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 124 ] && { log "timeout $label"; note timeout "$label: cut at ${budget}s"; }
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && note failed "$label: exit $rc (see gpu_all.log)"
  log "end $label (exit $rc)"
  return 0
}

# --- the machine ------------------------------------------------------------------------------------
python - "$RESULTS" <<'EOF' 2>&1 | tee -a "$LOG"
import importlib.util, json, platform, sys
import torch, transformers, peft
info = {"side": "env", "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "missing": [m for m in ("trl", "datasets", "liger_kernel", "flash_attn", "triton", "bitsandbytes")
                    if importlib.util.find_spec(m) is None]}
print(json.dumps(info))
open(sys.argv[1], "a").write(json.dumps(info) + "\n")
EOF
if ls "$WHEELS_DIR"/*.whl >/dev/null 2>&1 && [ "$MODE" = gpu ]; then
  log "installing carried wheels: $(ls "$WHEELS_DIR")"
  python -m pip install --no-deps --no-index "$WHEELS_DIR"/*.whl 2>&1 | tail -1 | tee -a "$LOG"
fi
PEERS=""
for candidate in "$REPO/../shared/bench/peers_gpu.py" "$PEERS_DIR/peers_gpu.py"; do
  [ -f "$candidate" ] && { PEERS=$candidate; break; }
done
[ -z "$PEERS" ] && note skipped "peers: peers_gpu.py not found (run --prepare before the device call)"
if ! python -c "import trl, datasets" 2>/dev/null; then
  note skipped "TRL peers (trl-packed, trl-packed-liger): trl/datasets not installed here (datasets needs pyarrow, xxhash: native wheels); their recorded figures are quoted from ../shared/bench/README.md"
fi

# --- ours first: both shapes, full then LoRA (each with its gates) ---------------------------------------
for shape in $SHAPES; do
  for mode in full lora; do
    run 150 "ours $shape $mode" python benchmarks/bench_gpu.py --arch "$shape" --modes "$mode" \
      "${OURS_ARGS[@]}" --results "$RESULTS"
  done
done
# --- the peers: HF Trainer on the same machine (TRL only where it is installed) ------------------------
if [ -n "$PEERS" ]; then
  variants=$PEER_VARIANTS
  python -c "import trl, datasets" 2>/dev/null && variants="$variants trl-packed trl-packed-liger"
  for shape in $SHAPES; do
    for mode in full lora; do
      run 90 "peers $shape $mode" bash -c "cd '$(dirname "$PEERS")' && python '$PEERS' --arch $shape --modes $mode --only $variants ${PEERS_ARGS[*]} \
        | tee /dev/stderr | sed -n 's/^RESULT /{\"side\": \"peer\", \"result\": /p' | sed 's/$/}/' >> '$RESULTS'"
    done
  done
fi
# --- what the attention kernel is worth: ours on SDPA's dense block-causal mask ----------------------
for shape in $SHAPES; do
  run 150 "ours $shape full sdpa" python benchmarks/bench_gpu.py --arch "$shape" --modes full --attn sdpa \
    "${OURS_ARGS[@]}" --results "$RESULTS"
done

python benchmarks/gpu_summary.py "$RESULTS" --json "$OUT_DIR/results.json" --markdown "$OUT_DIR/results.md" \
  --mode "$MODE" --seconds "$(($(date +%s) - START))" | tee -a "$LOG"
