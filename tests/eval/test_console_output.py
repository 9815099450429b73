"""What a rollout prints to a console that is a log file (CI): error lines on lines of their own, not glued onto a
progress bar's, and no bar (it wrote a line per episode there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from eval.scale_fixtures import ConstantPolicy, WalkToEnv, policy_server

from gr00t_client import EmbodimentTag
from gr00t_eval.cli import main
from gr00t_eval.rollout import register_env_prefix
from gr00t_eval.run_summary import print_errored_episodes

TESTS_DIR = Path(__file__).resolve().parents[1]


class FailsEveryThirdCall(ConstantPolicy):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.calls % 3 == 0:
            raise RuntimeError("policy blew up")
        return super()._get_action(observation, options)


def test_episode_errors_are_lines_of_their_own_and_no_bar_is_drawn_into_a_log_file(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    with policy_server(FailsEveryThirdCall()) as server:
        result = subprocess.run(
            [sys.executable, "-c", "import sys; from gr00t_eval.cli import main; sys.exit(main())", "rollout",
             "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--policy-client-port", str(server.port),
             "--output-dir", str(tmp_path / "out"), "--timeout-ms", "5000", "--n-episodes", "30", "--seed", "0",
             "--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6", "--no-video", "--vectorization",
             "sync", "--allow-errors"],
            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [part for line in result.stderr.splitlines() for part in line.split("\r")]
    errors = [line for line in lines if "errored: policy get_action failed" in line]
    assert errors and all(line.startswith("ERROR:gr00t_eval.rollout.runner:episode") for line in errors), errors[:3]
    assert not [line for line in lines if "Episodes:" in line]  # was one bar line per episode, errors glued on
    assert "success rate: " in result.stdout and "INCOMPLETE" in result.stdout  # the outcome, in plain lines


FORGED = "2026-01-01 00:00:00 INFO:gr00t_eval:forged line \x1b[31mred\x1b[0m"


class FailsWithAForgedLine(ConstantPolicy):
    def _get_action(self, observation, options=None):
        raise ValueError("model failed\n" + FORGED)


def test_an_errored_episodes_reason_cannot_forge_a_log_line(tmp_path):
    """The reason is a server's words: a newline or terminal escape in it is escaped, in the log and in the results."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    with policy_server(FailsWithAForgedLine()) as server:
        result = subprocess.run(
            [sys.executable, "-c", "import sys; from gr00t_eval.cli import main; sys.exit(main())", "rollout",
             "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--policy-client-port", str(server.port),
             "--output-dir", str(tmp_path / "out"), "--timeout-ms", "5000", "--n-episodes", "2", "--seed", "0",
             "--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6", "--no-video", "--vectorization", "sync",
             "--allow-errors"],
            env=env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert "errored: policy get_action failed" in log, log[-2000:]  # every episode errored: exit 1
    assert "forged line" in log and "\x1b" not in log
    assert not [line for line in log.splitlines() if line.startswith("2026-01-01")]
    assert "ValueError: model failed\\n2026-01-01 00:00:00 INFO:gr00t_eval:forged line \\x1b[31m" in log


class StepFailsWithAForgedLine(WalkToEnv):
    def step(self, action):
        raise RuntimeError("simulator died\n" + FORGED + "x" * 20_000)


def test_an_env_s_error_is_escaped_and_cut_to_4000_characters_in_results_log_and_console(tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    register_env_prefix("forgingenv", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: StepFailsWithAForgedLine())
    out = tmp_path / "out"
    with policy_server() as server:
        main(["rollout", "--env-name", "forgingenv/any", "--policy-client-port", str(server.port), "--output-dir",
              str(out), "--timeout-ms", "5000", "--n-episodes", "1", "--seed", "0", "--n-envs", "1", "--n-action-steps",
              "2", "--max-episode-steps", "6", "--no-video", "--vectorization", "sync", "--allow-errors"])
    saved = [json.loads((out / "results.json").read_text())["per_episode"][0]["error"],
             json.loads((out / "episodes.jsonl").read_text().splitlines()[0])["error"]]
    for error in saved:
        assert error.startswith("step 0 failed: RuntimeError: simulator died\\n2026-01-01") and len(error) <= 4000
        assert error.isprintable()
    printed = capsys.readouterr().out
    assert "forged line" in printed and not [line for line in printed.splitlines() if line.startswith("2026-01-01")]
    logged = [record.getMessage() for record in caplog.records if record.levelname in ("ERROR", "WARNING")]
    step_failed = [message for message in logged if "step 0 of episode 0 failed" in message]
    assert step_failed and all(m.isprintable() and len(m) <= 4200 for m in logged), logged  # the env's own log line
    assert not [record for record in caplog.records if record.levelname == "ERROR" and record.exc_info]


def test_the_console_summary_escapes_an_older_results_file_s_raw_reason(capsys):
    older = {"per_episode": [{"episode_index": 0, "task": "walkto/slow", "error": "boom\n" + FORGED + "x" * 20_000}]}
    print_errored_episodes(older)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and printed[0].startswith("episode 0 of walkto/slow errored: boom\\n2026-01-01")
    assert len(printed[0]) <= len("episode 0 of walkto/slow errored: ") + 4000 and "\x1b" not in printed[0]
