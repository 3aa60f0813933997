#!/usr/bin/env bash
# One prepared run for a lent GPU machine, under 8 minutes in all; every result lands as JSON in
# one folder ($OUT when set, else benchmarks/results/gpu-<date>):
#
#   1. the CUDA tests (pytest -m cuda): training on CUDA equals the CPU, scoring, the device-
#      resident batches, the sampled softmax and fp32/tf32/bf16 on CUDA      → log.txt, summary.json
#   2. Mult-VAE at the full ML-20M training shape (116,677 × 20,108, ~8M interactions), 200
#      epochs with validation, s/epoch against the GPU's own GEMM floor measured in the same
#      process                                                             → train_speed_fp32.json
#   3. the same at tf32 and bf16 (autocast), validation NDCG@100 per epoch to compare at equal
#      epochs                                                   → train_speed_tf32.json, _bf16.json
#   4. top-100 for all 136,677 ML-20M-shaped users (scoring on the GPU)       → recommend.json
#   5. the Gowalla pipeline's autoencoders (Mult-VAE, Mult-DAE, with refit), if the data is
#      there (GOWALLA=/path/to/gowalla, default ../shared/data/gowalla)    → gowalla.json
#   6. DDP with NCCL on every GPU (recvae train --nproc N), against one GPU → ddp_nccl.json
#
# Needs: a python with a CUDA build of torch, numpy, scipy, pandas, pyarrow, pyyaml, tqdm
# (MLflow and implicit are not used); the repository root is put on PYTHONPATH. Without CUDA it
# stops at once, saying so. GPU_DRY_RUN=1 runs every stage on the CPU at a tiny scale, to check
# the plumbing on a machine without a GPU. Stages that would not fit the remaining time budget
# (BUDGET seconds, default 460) are skipped and reported as such.
#
#   bash benchmarks/gpu.sh                       # on the GPU machine
#   GPU_DRY_RUN=1 OUT=/tmp/gpu-dry bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/recvae-gpu-XXXX)
trap 'rm -rf "$WORK"' EXIT
BUDGET=${BUDGET:-460}
START=$SECONDS
LOG="$OUT/log.txt"
STAGES="$WORK/stages.jsonl"
: > "$LOG"; : > "$STAGES"

if [ "${GPU_DRY_RUN:-0}" = 1 ]; then
  DEVICE=cpu; SCALE=0.01; EPOCHS=2; P_EPOCHS=2; REC_SCALE=0.01; GOWALLA_EPOCHS=2
  NGPU=2   # exercises the DDP stage with gloo
else
  DEVICE=cuda; SCALE=1.0; EPOCHS=${EPOCHS:-200}; P_EPOCHS=${PRECISION_EPOCHS:-100}; REC_SCALE=1.0
  GOWALLA_EPOCHS=0  # the pipeline's own
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>>"$LOG"; then
    echo "gpu.sh: no CUDA device visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo missing)); run it on the GPU machine, or GPU_DRY_RUN=1 to check the plumbing on CPU" >&2
    exit 2
  fi
  NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
  nvidia-smi >>"$LOG" 2>&1 || true
fi
echo "gpu.sh: device $DEVICE, $NGPU GPU(s), results in $OUT" | tee -a "$LOG"

# stage NAME ESTIMATED_SECONDS COMMAND...: runs COMMAND (output to the log) unless fewer than
# ESTIMATED_SECONDS of the budget are left; records status and seconds either way.
stage() {
  local name=$1 need=$2; shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt "$need" ]; then
    echo "== $name: skipped ($left s of the budget left, needs ~$need s)" | tee -a "$LOG"
    echo "{\"stage\": \"$name\", \"status\": \"skipped\", \"budget_left_s\": $left}" >>"$STAGES"
    return 0
  fi
  echo "== $name ($left s left)" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$left" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "{\"stage\": \"$name\", \"status\": $rc, \"seconds\": $((SECONDS - t0))}" >>"$STAGES"
  echo "   exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
}

# 1. CUDA tests (this file only imports what the device needs; -m cuda selects them)
stage cuda_tests 40 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/models/autoencoders/test_cuda.py

# the ML-20M-shaped training data, once for every speed run
stage ml20m_data 20 "$PY" -c "
import sys; sys.path.insert(0, 'benchmarks')
from train_speed import ml20m_like
ml20m_like($SCALE).save('$WORK/ml20m')"

# 2.-3. speed at fp32 (EPOCHS epochs), then tf32 and bf16 (P_EPOCHS epochs each)
stage train_speed_fp32 70 "$PY" benchmarks/train_speed.py --data "$WORK/ml20m" --small '' \
  --models mult-vae --device "$DEVICE" --epochs "$EPOCHS" --precision fp32 \
  --json "$OUT/train_speed_fp32.json"
for precision in bf16 tf32; do
  stage "train_speed_$precision" 40 "$PY" benchmarks/train_speed.py --data "$WORK/ml20m" \
    --small '' --models mult-vae --device "$DEVICE" --epochs "$P_EPOCHS" --precision "$precision" \
    --json "$OUT/train_speed_$precision.json"
done

# 4. top-100 for every user
stage recommend 40 "$PY" benchmarks/recommend.py --device "$DEVICE" --scale "$REC_SCALE" \
  --json "$OUT/recommend.json"

# 5. the Gowalla pipeline's autoencoders (selection on validation, refit, test, top-k file)
GOWALLA=${GOWALLA:-../shared/data/gowalla}
if [ -f "$GOWALLA/train.txt" ]; then
  stage gowalla 90 "$PY" - "$GOWALLA" "$WORK" "$DEVICE" "$GOWALLA_EPOCHS" "$OUT/gowalla.json" <<'EOF'
import dataclasses, json, sys, time
import yaml
from recvae.config import load_config
from recvae.run.pipeline import run_pipeline
from recvae.run.report import results_table

path, work, device, epochs, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
raw = yaml.safe_load(open("pipelines/gowalla.yaml"))
models = [m for m in raw["models"] if m["model"] in ("mult-vae", "mult-dae")]
for m in models:
    if epochs:  # the dry run: a few epochs
        m.setdefault("params", {})["epochs"] = epochs
cfg = load_config("pipelines/gowalla.yaml", {
    "models": models, "data.path": path, "data.out": f"{work}/data/gowalla",
    "output_dir": f"{work}/gowalla", "device": device})
t = time.perf_counter()
outcomes = run_pipeline(cfg, track=False, show_progress=False)
print(results_table(outcomes, ["test/recall_full_at_20", "test/ndcg_at_20", "test/ndcg_at_100"]))
json.dump({"benchmark": "gowalla_autoencoders", "device": device, "seconds": time.perf_counter() - t,
           "outcomes": [dataclasses.asdict(o) for o in outcomes]}, open(out, "w"), indent=1)
sys.exit(0 if all(o.ok for o in outcomes) else 1)
EOF
else
  echo "== gowalla: skipped (no $GOWALLA/train.txt; set GOWALLA=...)" | tee -a "$LOG"
  echo "{\"stage\": \"gowalla\", \"status\": \"skipped\", \"reason\": \"no data at $GOWALLA\"}" >>"$STAGES"
fi

# 6. DDP over NCCL on every GPU against one GPU (same global batch, same epochs)
if [ "$NGPU" -ge 2 ]; then
  stage ddp_nccl 90 "$PY" benchmarks/ddp_scaling.py --device "$DEVICE" --scale "$SCALE" \
    --epochs 3 --configs "1x1,${NGPU}x1" --json "$OUT/ddp_nccl.json"
else
  echo "== ddp_nccl: skipped (1 GPU: NCCL needs a GPU per process)" | tee -a "$LOG"
  echo "{\"stage\": \"ddp_nccl\", \"status\": \"skipped\", \"reason\": \"$NGPU GPU\"}" >>"$STAGES"
fi

# one summary: every stage's status and seconds, the device, the headline numbers
"$PY" - "$OUT" "$STAGES" "$((SECONDS - START))" "$DEVICE" <<'EOF' | tee -a "$LOG"
import json, pathlib, sys
out, stages, total, device = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
import torch
summary = {
    "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (GPU_DRY_RUN)",
    "torch": torch.__version__, "seconds": total,
    "stages": [json.loads(line) for line in open(stages)],
}
for precision in ("fp32", "tf32", "bf16"):
    f = out / f"train_speed_{precision}.json"
    if f.is_file():
        r = json.loads(f.read_text())["runs"][0]
        summary[f"mult_vae_{precision}"] = {k: r.get(k) for k in (
            "epochs", "epoch_seconds", "gemm_gflops", "floor600_seconds", "ratio_to_floor600",
            "fit_seconds_total", "val_ndcg_at_100", "val_ndcg_at_100_best", "gpu_peak_gb")}
f = out / "recommend.json"
if f.is_file():
    r = json.loads(f.read_text())
    summary["recommend"] = {k: r.get(k) for k in ("users", "wall_seconds", "score_seconds", "peak_rss_gb")}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary, indent=1))
failed = [s["stage"] for s in summary["stages"] if s["status"] not in (0, "skipped")]
print("gpu.sh:", f"failed stages: {', '.join(failed)}" if failed else "all stages ran or were skipped",
      f"in {total} s")
sys.exit(1 if failed else 0)
EOF
