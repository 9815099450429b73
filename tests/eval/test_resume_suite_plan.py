"""A resume of a suite run whose suite was redefined since it started (a task dropped, regrouped) ran the new plan:
the kept episodes of the dropped task were left out without a word, the regrouped task's episodes were pooled under
its new group while their records named the old one, and the run said "complete", exit 0. The run file now records
the tasks the run started with, and a resume of another task list is refused naming the difference. In-process CLI
runs against a loopback server."""

from __future__ import annotations

import json

import pytest

from eval.scale_fixtures import policy_server
from test_run_outputs import SMALL

RUN = ["--n-episodes", "2", "--seed", "0", *SMALL]
STARTED = [("walkto/fast", "easy"), ("walkto/slow", "hard")]


@pytest.fixture
def suite(monkeypatch):
    """register(tasks): (re)define the suite 'mine' for this test only, as editing a user's suite module would."""
    from gr00t_eval import suites

    monkeypatch.setattr(suites, "_SUITES", dict(suites._SUITES))
    return lambda tasks: suites.register_suite("mine", tasks, replace=True)


def _files(out):
    return {path.name: path.read_bytes() for path in out.iterdir() if path.name.startswith(("results", "episodes"))}


def test_the_run_file_records_the_tasks_and_groups_the_run_started_with(tmp_path, suite):
    from gr00t_eval import cli

    suite(STARTED)
    with policy_server() as server:
        assert cli.main(["rollout", "--env-name", "mine", *RUN, "--policy-client-port", str(server.port),
                         "--output-dir", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["tasks"] == [list(task) for task in STARTED]


@pytest.mark.parametrize("shard", [[], ["--shard", "0/2"]], ids=["run", "shard"])
def test_a_resume_of_a_suite_redefined_since_the_run_started_is_refused_naming_the_difference(tmp_path, capsys, suite,
                                                                                            shard):
    from gr00t_eval import cli

    out = tmp_path / "run"
    suite(STARTED)
    with policy_server() as server:
        port = ["--policy-client-port", str(server.port)]
        assert cli.main(["rollout", "--env-name", "mine", *RUN, *port, "--output-dir", str(out), *shard]) == 0
        saved = _files(out)
        suite([("walkto/fast", "hard")])
        capsys.readouterr()
        assert cli.main(["rollout", "--resume", str(out), *port, *shard]) == 2
    err = capsys.readouterr().err
    assert (f"--resume {out}: the tasks of --env-name mine changed since the run started: 'walkto/slow' (group "
            "'hard') removed; 'walkto/fast' moved from group 'easy' to 'hard'") in err
    assert "or start a new run (a new --output-dir, or --overwrite)" in err
    assert len(err.strip().splitlines()) == 1, err
    assert _files(out) == saved


def test_a_resume_of_a_suite_whose_tasks_were_reordered_is_refused_saying_so(tmp_path, capsys, suite):
    """A shard's slice of the episodes follows the order of the tasks: another order is another slice."""
    from gr00t_eval import cli

    out = tmp_path / "run"
    suite(STARTED)
    with policy_server() as server:
        port = ["--policy-client-port", str(server.port)]
        assert cli.main(["rollout", "--env-name", "mine", *RUN, *port, "--output-dir", str(out), "--shard", "1/2"]) == 0
        suite(STARTED[::-1])
        capsys.readouterr()
        assert cli.main(["rollout", "--resume", str(out), *port, "--shard", "1/2"]) == 2
    assert ("the same tasks in another order ('walkto/slow', 'walkto/fast'; started as 'walkto/fast', 'walkto/slow')"
            in capsys.readouterr().err)


def test_a_resume_of_a_run_file_written_before_tasks_were_recorded_resumes_as_before(tmp_path, capsys, suite):
    from gr00t_eval import cli

    out = tmp_path / "run"
    suite(STARTED)
    with policy_server() as server:
        port = ["--policy-client-port", str(server.port)]
        assert cli.main(["rollout", "--env-name", "mine", *RUN, *port, "--output-dir", str(out)]) == 0
        older = json.loads((out / "run.json").read_text())
        del older["tasks"]
        (out / "run.json").write_text(json.dumps(older))
        code = cli.main(["rollout", "--resume", str(out), *port])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["overall"]["n_episodes"] == 4


def test_run_suite_refuses_done_episodes_of_a_task_outside_its_plan_or_of_another_group(suite):
    """They were dropped from the results (another task), or pooled under a group their records did not name."""
    from gr00t_eval.metrics import EpisodeOutcome
    from gr00t_eval.rollout.runner import RolloutConfig
    from gr00t_eval.shard import run_suite

    config = RolloutConfig(env_name="unused", n_episodes=2, n_envs=1, n_action_steps=2, max_episode_steps=6, seed=0,
                           vectorization="sync")

    def outcome(task, group):
        return EpisodeOutcome(episode_index=0, success=True, sum_reward=1.0, max_reward=1.0, length=3, seed=0,
                              extras={"task": task, "group": group})

    suite([("walkto/fast", "hard")])
    with policy_server() as server:
        from gr00t_client import PolicyClient

        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            with pytest.raises(ValueError, match=r"done has episode 0 of 'walkto/slow', a task this run's plan does "
                                                 r"not hold \(its tasks: 'walkto/fast'\)"):
                run_suite(client, "mine", config, done=[outcome("walkto/slow", "hard")])
            with pytest.raises(ValueError, match=r"done has episode 0 of 'walkto/fast' in group 'easy', but this "
                                                 r"run's plan puts that task in group 'hard'"):
                run_suite(client, "mine", config, done=[outcome("walkto/fast", "easy")])
