#!/usr/bin/env bash
# The end-to-end demo (make demo): record Meta-World's scripted expert into a LeRobot dataset, serve it with
# ReplayPolicy, check open-loop error (~0) and closed-loop success (>= 95%) against that server; then the model leg:
# a random-weight N1.7 checkpoint with the dataset's keys and statistics, served on CPU through the same open-loop and
# rollout commands (they must run without errors; a random model succeeds by chance only), with its per-call latency.
# Settings: DEMO_DIR (default /tmp/gr00t_demo; a relative one is taken from the caller's folder), DEMO_TASK (reach-v3),
# DEMO_EPISODES (10), DEMO_PORT (a free port), DEMO_MODEL_EPISODES (2: rollout episodes against the model).
# DEMO_DIR is emptied first, so the demo refuses (exit 2) a folder that holds anything but an earlier demo's output (its
# marker file .gr00t_demo), and one that another demo is running in. Ctrl-C, SIGTERM and SIGHUP stop the running step
# and the server (exit 130, 143, 129).
set -euo pipefail
DEMO_DIR="${DEMO_DIR:-/tmp/gr00t_demo}"
case "$DEMO_DIR" in /*) ;; *) DEMO_DIR="$PWD/${DEMO_DIR#./}" ;; esac  # the caller's folder, before the cd
cd "$(dirname "$0")/.."

VENV_BIN=.venv/bin
PY=$VENV_BIN/python
if [ ! -x "$VENV_BIN/gr00t-eval" ] || [ ! -x "$VENV_BIN/gr00t-server" ]; then
  echo "error: $VENV_BIN/gr00t-eval or gr00t-server is missing; run 'make install' first" >&2
  exit 1
fi
export MUJOCO_GL="${MUJOCO_GL:-egl}"          # headless MuJoCo rendering
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-$MUJOCO_GL}"

TASK="${DEMO_TASK:-reach-v3}"
EPISODES="${DEMO_EPISODES:-10}"
MODEL_EPISODES="${DEMO_MODEL_EPISODES:-2}"
HORIZON=8
PORT="${DEMO_PORT:-$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
DATASET="$DEMO_DIR/dataset"
MARKER=.gr00t_demo
SERVER_PID=""
STEP_PID=""

stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    echo "Server stopped."
  fi
  SERVER_PID=""
}

# stop_step: stop the running step's process group (its command and that command's workers), then anything left in it.
stop_step() {
  if [ -n "$STEP_PID" ]; then
    kill -TERM -- "-$STEP_PID" 2>/dev/null || true
    wait "$STEP_PID" 2>/dev/null || true
    kill -KILL -- "-$STEP_PID" 2>/dev/null || true
  fi
  STEP_PID=""
}

# stop_on EXIT_CODE: a stop signal ends the running step and the server, then the demo.
stop_on() {
  trap - INT TERM HUP
  stop_step
  stop_server
  exit "$1"
}
trap stop_server EXIT
trap 'stop_on 130' INT
trap 'stop_on 143' TERM
trap 'stop_on 129' HUP

# run_step CMD...: run one step in its own process group and wait for it: bash runs a trap only once a foreground
# command has ended, while `wait` gives way to it at once. A Ctrl-C reaches the step through stop_on.
run_step() {
  set -m
  { trap : TERM; "$@"; } &  # the step's own shell outlives its commands on SIGTERM, so stop_step waits for them
  STEP_PID=$!
  set +m
  wait "$STEP_PID"
  STEP_PID=""
}

# filtered PATTERN CMD...: run CMD and show only its output lines that match PATTERN (to CMD's last line: stop_step's
# SIGTERM is for CMD).
filtered() {
  local pattern="$1"; shift
  "$@" | { trap '' TERM; grep -E "$pattern"; }
}

# saved_to FILE CMD...: run CMD, showing its output and saving it in FILE (to CMD's last line, as filtered).
saved_to() {
  local file="$1"; shift
  "$@" | { trap '' TERM; tee "$file"; }
}

# claim_demo_dir: take DEMO_DIR for this run: refuse a folder with files that are not a demo's output, or one another
# demo holds (the lock on the marker lasts as long as this script and what it started), then empty it.
claim_demo_dir() {
  if [ -e "$DEMO_DIR" ] && [ ! -d "$DEMO_DIR" ]; then
    echo "error: DEMO_DIR $DEMO_DIR is not a folder; set DEMO_DIR to a new or empty folder" >&2
    exit 2
  fi
  if [ -L "$DEMO_DIR" ] && [ ! -e "$DEMO_DIR" ]; then
    echo "error: DEMO_DIR $DEMO_DIR is a link to $(readlink "$DEMO_DIR"), which does not exist; make that folder" \
      "or set DEMO_DIR to a new or empty folder" >&2
    exit 2
  fi
  if [ -d "$DEMO_DIR" ] && [ ! -e "$DEMO_DIR/$MARKER" ] && [ -n "$(ls -A "$DEMO_DIR")" ]; then
    echo "error: DEMO_DIR $DEMO_DIR holds files that are not a demo's output (no $MARKER in it), and the demo" \
      "empties its folder; set DEMO_DIR to a new or empty folder" >&2
    exit 2
  fi
  command -v flock >/dev/null || { echo "error: the demo locks DEMO_DIR with flock (util-linux)" >&2; exit 1; }
  if ! made=$(mkdir -p "$DEMO_DIR" 2>&1); then
    echo "error: DEMO_DIR $DEMO_DIR cannot be made (${made#mkdir: }); set DEMO_DIR to a folder you can write" >&2
    exit 2
  fi
  exec 9>>"$DEMO_DIR/$MARKER"
  if ! flock -n 9; then
    echo "error: another demo is running in $DEMO_DIR (pid $(cat "$DEMO_DIR/$MARKER")); wait for it to end" \
      "or set DEMO_DIR to another folder" >&2
    exit 2
  fi
  echo "$$" >"$DEMO_DIR/$MARKER"
  find "$DEMO_DIR" -mindepth 1 -maxdepth 1 ! -name "$MARKER" -exec rm -rf {} +
}

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

claim_demo_dir
START=$(date +%s)

echo "== 1/7 Recording $EPISODES episodes of Meta-World $TASK (scripted expert) =="
run_step $VENV_BIN/gr00t-eval --log-level WARNING record --env-name "metaworld/$TASK" --episodes "$EPISODES" \
  --output "$DATASET" --seed 0 --image-size 64

echo "== 2/7 Starting the replay server on port $PORT =="
start_server "$DEMO_DIR/server.log" --dataset-path "$DATASET" --embodiment-tag new_embodiment \
  --execution-horizon "$HORIZON" --use-sim-policy-wrapper

echo "== 3/7 Open-loop evaluation (predicted chunks vs recorded actions) =="
run_step filtered "^(MSE|Average|Results)" $VENV_BIN/gr00t-eval --log-level WARNING open-loop \
  --dataset-path "$DATASET" --embodiment-tag new_embodiment --host 127.0.0.1 --port "$PORT" \
  --traj-ids $(seq 0 $((EPISODES - 1))) --execution-horizon "$HORIZON" --output-dir "$DEMO_DIR/open_loop"

echo "== 4/7 Closed-loop rollout (2 envs, episode i with the recorded seed i) =="
run_step filtered "^(results|success rate|Collecting|Video saved|Results|episode)" \
  $VENV_BIN/gr00t-eval --log-level WARNING rollout --env-name "metaworld/$TASK" --n-episodes "$EPISODES" --n-envs 2 \
  --n-action-steps "$HORIZON" --max-episode-steps 200 --policy-client-host 127.0.0.1 --policy-client-port "$PORT" \
  --seed 0 --output-dir "$DEMO_DIR/rollout"

stop_server

echo "== 5/7 The model leg: a random-weight N1.7 checkpoint with the dataset's keys and statistics, served on CPU =="
run_step $VENV_BIN/gr00t-server make-test-checkpoint "$DEMO_DIR/checkpoint" --dataset-path "$DATASET" \
  --embodiment metaworld
start_server "$DEMO_DIR/model_server.log" --model-path "$DEMO_DIR/checkpoint" --embodiment-tag new_embodiment \
  --use-sim-policy-wrapper --device cpu

echo "== 6/7 Open-loop and rollout against the model (random weights: the numbers are not a score) =="
run_step filtered "^(Average|Results)" $VENV_BIN/gr00t-eval --log-level WARNING open-loop \
  --dataset-path "$DATASET" --embodiment-tag new_embodiment --host 127.0.0.1 --port "$PORT" --traj-ids 0 --steps 32 \
  --execution-horizon "$HORIZON" --output-dir "$DEMO_DIR/model_open_loop"
run_step filtered "^(Collecting|success rate|Results)" \
  $VENV_BIN/gr00t-eval --log-level WARNING rollout --env-name "metaworld/$TASK" --n-episodes "$MODEL_EPISODES" \
  --n-envs 1 --n-action-steps "$HORIZON" --max-episode-steps 40 --policy-client-host 127.0.0.1 \
  --policy-client-port "$PORT" --seed 0 --no-video --output-dir "$DEMO_DIR/model_rollout"

echo "== 7/7 Per-call latency of the N1.7 network on CPU =="
run_step saved_to "$DEMO_DIR/model_latency.txt" $PY scripts/demo_latency.py --port "$PORT" --task "$TASK" --calls 20
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
