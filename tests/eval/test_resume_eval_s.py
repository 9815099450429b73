"""A resume's eval_s: the attempts a results file covers count as it says, later ones by their episode-log stamps.
A resume with nothing left to run re-derived a complete run's time from the stamps, whose first task also holds the
attempt's start-up, and kept the larger total: its figures grew by each no-op resume's start-up (0.70 -> 0.78 s)."""

from __future__ import annotations

import json

import pytest

from eval.scale_fixtures import ConstantPolicy
from gr00t_eval import cli
from gr00t_eval.episode_log import ATTEMPT_KEY, ATTEMPT_S_KEY
from gr00t_eval.run_resume import ATTEMPTS_KEY, covered_attempts, earlier_eval_s
from serving import running_server


def results(eval_s, attempts=None):
    written = {"per_task": {task: {"eval_s": seconds} for task, seconds in eval_s.items()}}
    return written if attempts is None else {**written, ATTEMPTS_KEY: attempts}


def logged(*entries):
    return [{"task": task, ATTEMPT_KEY: attempt, ATTEMPT_S_KEY: seconds} for attempt, task, seconds in entries]


def test_the_attempts_a_results_file_covers_count_from_it_and_later_ones_from_their_stamps():
    log = logged(("a1", "t/a", 3.0), ("a1", "t/b", 5.0), ("a2", "t/b", 4.0))  # a2: killed before writing results
    # a1 wrote 2.5 + 1.5 s (its stamps, with its start-up, say 3 + 2): a1's file counts, a2's stamps are added
    assert earlier_eval_s(log, results({"t/a": 2.5, "t/b": 1.5}, ["a1"])) == {"t/a": 2.5, "t/b": 5.5}
    # every attempt covered (a no-op resume after a complete run): the file alone, however the stamps add up
    assert earlier_eval_s(log, results({"t/a": 2.5, "t/b": 1.5}, ["a1", "a2"])) == {"t/a": 2.5, "t/b": 1.5}
    # a file of an older version names none: the larger total, as before
    assert earlier_eval_s(log, results({"t/a": 2.5, "t/b": 1.5})) == {"t/a": 3.0, "t/b": 6.0}
    assert earlier_eval_s(log, results({"t/a": 20.0})) == {"t/a": 20.0}


def test_a_results_file_covers_the_resumed_logs_attempts_and_its_own():
    assert covered_attempts(logged(("a1", "t", 1.0), ("a2", "t", 1.0), ("a1", "t", 2.0)), "a3") == ["a1", "a2", "a3"]
    assert covered_attempts([{"task": "t"}], "a1") == ["a1"]  # an older version's entry names no attempt


@pytest.fixture(scope="module")
def server():
    with running_server(ConstantPolicy()) as running:
        yield running


def test_resuming_a_complete_run_leaves_its_times_as_they_were(tmp_path, server):
    out = tmp_path / "run"
    assert cli.main(["rollout", "--env-name", "walkto/fast,walkto/slow", "--n-episodes", "2", "--n-envs", "1",
                     "--vectorization", "sync", "--seed", "0", "--n-action-steps", "2", "--max-episode-steps", "6",
                     "--no-video", "--policy-client-port", str(server.port), "--output-dir", str(out)]) == 0
    first = json.loads((out / "results.json").read_text())
    attempt = {json.loads(line)[ATTEMPT_KEY] for line in (out / "episodes.jsonl").read_text().splitlines()}
    assert first[ATTEMPTS_KEY] == sorted(attempt) and len(attempt) == 1
    for _ in range(2):
        assert cli.main(["rollout", "--resume", str(out), "--policy-client-port", str(server.port)]) == 0
        again = json.loads((out / "results.json").read_text())
        assert again["status"] == "complete"
        for task in first["per_task"]:
            assert again["per_task"][task]["eval_s"] == pytest.approx(first["per_task"][task]["eval_s"], abs=1e-6)
        assert again["overall"]["eval_s"] == pytest.approx(first["overall"]["eval_s"], abs=1e-6)
        assert again[ATTEMPTS_KEY][0] == first[ATTEMPTS_KEY][0] and len(again[ATTEMPTS_KEY]) >= 2
