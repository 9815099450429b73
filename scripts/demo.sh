#!/usr/bin/env bash
# The end-to-end demo (make demo): record Meta-World's scripted expert into a LeRobot dataset, serve it with
# ReplayPolicy, check open-loop error (~0) and closed-loop success (>= 95%) against that server; then the model leg:
# a random-weight N1.7 checkpoint with the dataset's keys and statistics, served on CPU through the same open-loop and
# rollout commands (they must run without errors; a random model succeeds by chance only), with its per-call latency.
# Settings: DEMO_DIR (default /tmp/gr00t_demo; a relative one is taken from the caller's folder), DEMO_TASK (reach-v3),
# DEMO_EPISODES (10), DEMO_PORT (a free port), DEMO_MODEL_EPISODES (2: rollout episodes against the model). The
# numbers are read in base 10 (010 is ten), and one out of range, or a DEMO_PORT in use, is refused (exit 2) at once.
# An earlier demo's output in DEMO_DIR (marked by its .gr00t_demo file) is deleted first, and only that: the demo refuses
# (exit 2) a folder that holds anything else - without the marker, or beside it anything at the top but the entries a
# demo writes (dataset, checkpoint, open_loop, rollout, model_open_loop, model_rollout, server.log, model_server.log,
# model_latency.txt), named in the refusal - and one that another demo is running in. Ctrl-C, SIGTERM and SIGHUP stop the running step
# and the server (exit 130, 143, 129); a SIGKILL of the script stops them within a second (a watchdog).
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

# number_setting NAME DEFAULT MIN MAX: the setting NAME (DEFAULT where unset) in base 10, as the commands read it (in
# bash arithmetic a leading 0 is octal: 010 would be 8, 08 an error), or exit 2 naming NAME before any work.
number_setting() {
  local value="${!1:-$2}"
  if [[ "$value" =~ ^0*([0-9]{1,9})$ ]] && (( 10#${BASH_REMATCH[1]} >= $3 && 10#${BASH_REMATCH[1]} <= $4 )); then
    echo "$(( 10#${BASH_REMATCH[1]} ))"
  else
    echo "error: $1 must be a whole number from $3 to $4, got '$value'" >&2
    exit 2
  fi
}

TASK="${DEMO_TASK:-reach-v3}"
EPISODES=$(number_setting DEMO_EPISODES 10 1 100000)
MODEL_EPISODES=$(number_setting DEMO_MODEL_EPISODES 2 1 100000)
HORIZON=8
if [ -n "${DEMO_PORT:-}" ]; then
  PORT=$(number_setting DEMO_PORT "" 1 65535)
  # bound and listened on as the server will (SO_REUSEADDR, as ZeroMQ), so that a port in use is refused before the
  # recording rather than by the server's --port check after it
  if ! why=$($PY -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen(1)
except OSError as exc:
    sys.exit(exc.strerror)' "$PORT" 2>&1); then
    echo "error: DEMO_PORT $PORT cannot be used on 127.0.0.1 ($why); set another DEMO_PORT, or leave it unset for" \
      "a free one" >&2
    exit 2
  fi
else
  PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
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

# watchdog TARGET: stop TARGET (a pid, or -PGID for a process group) once this script is gone, as a SIGKILL runs no trap
# (kill -9 PID; or kill -9 -PGID, which misses the steps' groups: so the watchdog has a group of its own); it ends by
# itself with TARGET. It keeps no output open, and not the lock (fd 9).
watchdog() {
  set -m
  { while kill -0 "$$" 2>/dev/null && kill -0 -- "$1" 2>/dev/null; do sleep 0.5; done
    kill -0 "$$" 2>/dev/null || kill -TERM -- "$1" 2>/dev/null; } </dev/null >/dev/null 2>&1 9>&- &
  set +m
}

# stop_on EXIT_CODE: a stop signal ends the running step and the server, then the demo.
stop_on() {
  trap - INT TERM HUP
  stop_step
  stop_server
  exit "$1"
}
trap 'stop_server; wait' EXIT  # wait: the watchdogs end within 0.5 s of their targets, reaped by this script
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
  watchdog "-$STEP_PID"
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

# claim_demo_dir: take DEMO_DIR for this run: refuse a folder with files that are not a demo's output (no marker, or
# entries beside an earlier demo's that no demo writes), or one another demo holds (the lock on the marker lasts as
# long as this script and what it started), then delete an earlier demo's output.
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
    local demo_pid holders
    demo_pid=$(cat "$DEMO_DIR/$MARKER")
    if kill -0 "$demo_pid" 2>/dev/null; then
      echo "error: another demo is running in $DEMO_DIR (pid $demo_pid); wait for it to end" \
        "or set DEMO_DIR to another folder" >&2
      exit 2
    fi
    # the demo that wrote the marker has ended, and what it started still holds the lock (it ends within a second of
    # a demo's end; longer, it was left behind): name those processes, as "wait for it to end" would never end
    exec 9>&-  # not this script's own
    holders=$(fuser "$DEMO_DIR/$MARKER" 2>/dev/null | xargs) || true  # none where fuser (psmisc) is missing
    echo "error: the demo that ran in $DEMO_DIR (pid $demo_pid) has ended, but processes it started still hold the" \
      "folder (pid ${holders:-unknown: see fuser $DEMO_DIR/$MARKER}); stop them, or set DEMO_DIR to another folder" >&2
    exit 2
  fi
  refuse_other_entries
  echo "$$" >"$DEMO_DIR/$MARKER"
  local entry
  for entry in "${DEMO_ENTRIES[@]}"; do
    rm -rf "${DEMO_DIR:?}/$entry"
  done
}

# What a demo writes at the top of DEMO_DIR: the only entries a later demo deletes.
DEMO_ENTRIES=(dataset checkpoint open_loop rollout model_open_loop model_rollout server.log model_server.log
  model_latency.txt)

# refuse_other_entries: exit 2 naming the entries at the top of a marked DEMO_DIR that no demo writes (a user's
# results put there since): the demo deletes only its own.
refuse_other_entries() {
  local others=() entry name
  for entry in "$DEMO_DIR"/* "$DEMO_DIR"/.[!.]* "$DEMO_DIR"/..?*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    name=${entry##*/}
    [ "$name" = "$MARKER" ] && continue
    [[ " ${DEMO_ENTRIES[*]} " == *" $name "* ]] || others+=("$name")
  done
  if [ "${#others[@]}" -gt 0 ]; then
    echo "error: DEMO_DIR $DEMO_DIR holds an earlier demo's output and also ${others[*]}, which are not a demo's" \
      "output; the demo deletes only its own (${DEMO_ENTRIES[*]}), so nothing was deleted: move those away, or set" \
      "DEMO_DIR to a new or empty folder" >&2
    exit 2
  fi
}

# start_server LOG ARGS...: start gr00t-server serve in the background and wait for its ready line.
start_server() {
  local log="$1"; shift
  $VENV_BIN/gr00t-server serve "$@" --host 127.0.0.1 --port "$PORT" >"$log" 2>&1 &
  SERVER_PID=$!
  watchdog "$SERVER_PID"
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
