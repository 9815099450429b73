#!/usr/bin/env bash
# The end-to-end demo (make demo): record Meta-World's scripted expert into a LeRobot dataset, serve it with
# ReplayPolicy, check open-loop error (~0) and closed-loop success (>= 95%) against that server; then the model leg:
# a random-weight N1.7 checkpoint with the dataset's keys and statistics, served on CPU through the same open-loop and
# rollout commands (they must run without errors; a random model succeeds by chance only), with its per-call latency.
# Settings: DEMO_DIR (default /tmp/gr00t_demo), DEMO_TASK (reach-v3), DEMO_EPISODES (10), DEMO_PORT (a free port),
# DEMO_MODEL_EPISODES (2: rollout episodes against the model).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV_BIN=.venv/bin
PY=$VENV_BIN/python
if [ ! -x "$VENV_BIN/gr00t-eval" ] || [ ! -x "$VENV_BIN/gr00t-server" ]; then
  echo "error: $VENV_BIN/gr00t-eval or gr00t-server is missing; run 'make install' first" >&2
  exit 1
fi
export MUJOCO_GL="${MUJOCO_GL:-egl}"          # headless MuJoCo rendering
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-$MUJOCO_GL}"

DEMO_DIR="${DEMO_DIR:-/tmp/gr00t_demo}"
TASK="${DEMO_TASK:-reach-v3}"
EPISODES="${DEMO_EPISODES:-10}"
MODEL_EPISODES="${DEMO_MODEL_EPISODES:-2}"
HORIZON=8
PORT="${DEMO_PORT:-$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
DATASET="$DEMO_DIR/dataset"
SERVER_PID=""

stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    echo "Server stopped."
  fi
  SERVER_PID=""
}
trap stop_server EXIT

# start_server LOG ARGS...: start gr00t-server serve in the background and wait for its ready line.
start_server() {
  local log="$1"; shift
  $VENV_BIN/gr00t-server serve "$@" --host 127.0.0.1 --port "$PORT" >"$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 240); do
    grep -q "Server is ready and listening on" "$log" 2>/dev/null && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "error: the server exited:" >&2; cat "$log" >&2; exit 1
    fi
    sleep 0.5
  done
  grep -q "Server is ready and listening on" "$log" || { echo "error: server not ready after 120 s" >&2; exit 1; }
  grep "Server is ready" "$log"
}

rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
START=$(date +%s)

echo "== 1/7 Recording $EPISODES episodes of Meta-World $TASK (scripted expert) =="
$VENV_BIN/gr00t-eval --log-level WARNING record --env-name "metaworld/$TASK" --episodes "$EPISODES" \
  --output "$DATASET" --seed 0 --image-size 64

echo "== 2/7 Starting the replay server on port $PORT =="
start_server "$DEMO_DIR/server.log" --dataset-path "$DATASET" --embodiment-tag new_embodiment \
  --execution-horizon "$HORIZON" --use-sim-policy-wrapper

echo "== 3/7 Open-loop evaluation (predicted chunks vs recorded actions) =="
$VENV_BIN/gr00t-eval --log-level WARNING open-loop --dataset-path "$DATASET" --embodiment-tag new_embodiment \
  --host 127.0.0.1 --port "$PORT" --traj-ids $(seq 0 $((EPISODES - 1))) --execution-horizon "$HORIZON" \
  --output-dir "$DEMO_DIR/open_loop" | grep -E "^(MSE|Average|Results)"

echo "== 4/7 Closed-loop rollout (2 envs, episode i with the recorded seed i) =="
$VENV_BIN/gr00t-eval --log-level WARNING rollout --env-name "metaworld/$TASK" --n-episodes "$EPISODES" --n-envs 2 \
  --n-action-steps "$HORIZON" --max-episode-steps 200 --policy-client-host 127.0.0.1 --policy-client-port "$PORT" \
  --seed 0 --output-dir "$DEMO_DIR/rollout" | grep -E "^(results|success rate|Collecting|Video saved|Results|episode)"

stop_server

echo "== 5/7 The model leg: a random-weight N1.7 checkpoint with the dataset's keys and statistics, served on CPU =="
$VENV_BIN/gr00t-server make-test-checkpoint "$DEMO_DIR/checkpoint" --dataset-path "$DATASET" --embodiment metaworld
start_server "$DEMO_DIR/model_server.log" --model-path "$DEMO_DIR/checkpoint" --embodiment-tag new_embodiment \
  --use-sim-policy-wrapper --device cpu

echo "== 6/7 Open-loop and rollout against the model (random weights: the numbers are not a score) =="
$VENV_BIN/gr00t-eval --log-level WARNING open-loop --dataset-path "$DATASET" --embodiment-tag new_embodiment \
  --host 127.0.0.1 --port "$PORT" --traj-ids 0 --steps 32 --execution-horizon "$HORIZON" \
  --output-dir "$DEMO_DIR/model_open_loop" | grep -E "^(Average|Results)"
$VENV_BIN/gr00t-eval --log-level WARNING rollout --env-name "metaworld/$TASK" --n-episodes "$MODEL_EPISODES" --n-envs 1 \
  --n-action-steps "$HORIZON" --max-episode-steps 40 --policy-client-host 127.0.0.1 --policy-client-port "$PORT" \
  --seed 0 --no-video --output-dir "$DEMO_DIR/model_rollout" | grep -E "^(Collecting|success rate|Results)"

echo "== 7/7 Per-call latency of the N1.7 network on CPU =="
$PY scripts/demo_latency.py --port "$PORT" --task "$TASK" --calls 20 | tee "$DEMO_DIR/model_latency.txt"
stop_server

$PY - "$DEMO_DIR" "$(( $(date +%s) - START ))" <<'EOF'
import json, sys
from pathlib import Path

root, seconds = Path(sys.argv[1]), sys.argv[2]
open_loop = json.loads((root / "open_loop" / "results.json").read_text())
rollout = json.loads((root / "rollout" / "results.json").read_text())
model_open_loop = json.loads((root / "model_open_loop" / "results.json").read_text())["aggregated"]
model_rollout = json.loads((root / "model_rollout" / "results.json").read_text())["aggregated"]
latency = (root / "model_latency.txt").read_text().strip()
mse, mae = open_loop["aggregated"]["avg_mse"], open_loop["aggregated"]["avg_mae"]
agg = rollout["aggregated"]
print()
print("== Demo summary ==")
print(f"  dataset:        {root / 'dataset'}  ({open_loop['aggregated']['n_trajectories']} episodes)")
print(f"  open-loop:      average MSE {mse:.3g}, MAE {mae:.3g}  (expected ~0)")
print(f"  rollout:        success {agg['pc_success']:.1f}% over {agg['n_episodes']} episodes, "
      f"avg max reward {agg['avg_max_reward']:.2f}, {agg['eval_ep_s']:.2f} s/episode  (expected >= 95%)")
print(f"  model leg:      open-loop MSE {model_open_loop['avg_mse']:.3g} over {model_open_loop['n_trajectories']} "
      f"trajectory, rollout {model_rollout['n_episodes']} episodes with {model_rollout['n_errors']} errors "
      "(random weights: expected to run, not to succeed)")
print(f"  model latency:  {latency}")
print(f"  plots:          {root / 'open_loop'}/traj_*.jpeg")
print(f"  videos:         {root / 'rollout' / 'videos'}")
print(f"  results:        {root / 'open_loop' / 'results.json'}, {root / 'rollout' / 'results.json'}")
print(f"  server logs:    {root / 'server.log'}, {root / 'model_server.log'}")
print(f"  took:           {seconds} s")
model_ok = model_open_loop["n_trajectories"] >= 1 and model_rollout["n_errors"] == 0 and model_rollout["n_episodes"] >= 1
ok = mse is not None and mse < 1e-6 and agg["pc_success"] >= 95.0 and model_ok
print("  DEMO " + ("PASSED" if ok else "FAILED"))
sys.exit(0 if ok else 1)
EOF
