#!/usr/bin/env bash
# The end-to-end demo (make demo): record Meta-World's scripted expert into a LeRobot dataset, serve it with
# ReplayPolicy, check open-loop error (~0) and closed-loop success (>= 95%) against that server, print a summary.
# Settings: DEMO_DIR (default /tmp/gr00t_demo), DEMO_TASK (reach-v3), DEMO_EPISODES (10), DEMO_PORT (a free port).
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
HORIZON=8
PORT="${DEMO_PORT:-$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
DATASET="$DEMO_DIR/dataset"
SERVER_PID=""

stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    echo "Replay server stopped."
  fi
}
trap stop_server EXIT

rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
START=$(date +%s)

echo "== 1/4 Recording $EPISODES episodes of Meta-World $TASK (scripted expert) =="
$VENV_BIN/gr00t-eval --log-level WARNING record --env-name "metaworld/$TASK" --episodes "$EPISODES" \
  --output "$DATASET" --seed 0 --image-size 64

echo "== 2/4 Starting the replay server on port $PORT =="
$VENV_BIN/gr00t-server serve --dataset-path "$DATASET" --embodiment-tag new_embodiment \
  --execution-horizon "$HORIZON" --use-sim-policy-wrapper --host 127.0.0.1 --port "$PORT" \
  >"$DEMO_DIR/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 240); do
  grep -q "Server is ready and listening on" "$DEMO_DIR/server.log" 2>/dev/null && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "error: the replay server exited:" >&2; cat "$DEMO_DIR/server.log" >&2; exit 1
  fi
  sleep 0.5
done
grep -q "Server is ready and listening on" "$DEMO_DIR/server.log" || { echo "error: server not ready after 120 s" >&2; exit 1; }
grep "Server is ready" "$DEMO_DIR/server.log"

echo "== 3/4 Open-loop evaluation (predicted chunks vs recorded actions) =="
$VENV_BIN/gr00t-eval --log-level WARNING open-loop --dataset-path "$DATASET" --embodiment-tag new_embodiment \
  --host 127.0.0.1 --port "$PORT" --traj-ids $(seq 0 $((EPISODES - 1))) --execution-horizon "$HORIZON" \
  --output-dir "$DEMO_DIR/open_loop" | grep -E "^(MSE|Average|Results)"

echo "== 4/4 Closed-loop rollout (2 envs, episode i with the recorded seed i) =="
$VENV_BIN/gr00t-eval --log-level WARNING rollout --env-name "metaworld/$TASK" --n-episodes "$EPISODES" --n-envs 2 \
  --n-action-steps "$HORIZON" --max-episode-steps 200 --policy-client-host 127.0.0.1 --policy-client-port "$PORT" \
  --seed 0 --output-dir "$DEMO_DIR/rollout" | grep -E "^(results|success rate|Collecting|Video saved|Results|episode)"

stop_server
SERVER_PID=""

$PY - "$DEMO_DIR" "$(( $(date +%s) - START ))" <<'EOF'
import json, sys
from pathlib import Path

root, seconds = Path(sys.argv[1]), sys.argv[2]
open_loop = json.loads((root / "open_loop" / "results.json").read_text())
rollout = json.loads((root / "rollout" / "results.json").read_text())
mse, mae = open_loop["aggregated"]["avg_mse"], open_loop["aggregated"]["avg_mae"]
agg = rollout["aggregated"]
print()
print("== Demo summary ==")
print(f"  dataset:        {root / 'dataset'}  ({open_loop['aggregated']['n_trajectories']} episodes)")
print(f"  open-loop:      average MSE {mse:.3g}, MAE {mae:.3g}  (expected ~0)")
print(f"  rollout:        success {agg['pc_success']:.1f}% over {agg['n_episodes']} episodes, "
      f"avg max reward {agg['avg_max_reward']:.2f}, {agg['eval_ep_s']:.2f} s/episode  (expected >= 95%)")
print(f"  plots:          {root / 'open_loop'}/traj_*.jpeg")
print(f"  videos:         {root / 'rollout' / 'videos'}")
print(f"  results:        {root / 'open_loop' / 'results.json'}, {root / 'rollout' / 'results.json'}")
print(f"  server log:     {root / 'server.log'}")
print(f"  took:           {seconds} s")
ok = mse is not None and mse < 1e-6 and agg["pc_success"] >= 95.0
print("  DEMO " + ("PASSED" if ok else "FAILED"))
sys.exit(0 if ok else 1)
EOF
