"""An env, adapter or --env-import module that calls sys.exit() is an error of what it ran, named, never a silent exit
0 with no results.json. Real CLI, real loopback server."""

from __future__ import annotations

import json
import sys

import pytest

from eval.scale_fixtures import ConstantPolicy, WalkToEnv
from gr00t_client import EmbodimentTag
from gr00t_eval.cli import main
from gr00t_eval.rollout.envs import register_env_prefix
from serving import running_server

EXITING_SEED = 101  # episode 1 of a run with --seed 100


class ExitingWalkEnv(WalkToEnv):
    """WalkTo that calls sys.exit(0) in the reset or a step of the episode with seed 101, as a simulator whose window
    was closed does."""

    def __init__(self, exit_in: str):
        super().__init__(1.0)
        self.exit_in = exit_in
        self.exits = False

    def reset(self, *, seed=None, options=None):
        self.exits = seed == EXITING_SEED
        if self.exits and self.exit_in == "reset":
            sys.exit(0)
        return super().reset(seed=seed, options=options)

    def step(self, action):
        if self.exits and self.exit_in == "step":
            sys.exit(0)
        return super().step(action)


def rollout(env_name, port, output_dir, *extra):
    return main(["rollout", "--env-name", env_name, "--n-episodes", "3", "--n-envs", "1", "--n-action-steps", "2",
                 "--max-episode-steps", "6", "--seed", "100", "--no-video", "--vectorization", "sync",
                 "--policy-client-port", str(port), "--output-dir", str(output_dir), *extra])


@pytest.mark.parametrize("exit_in", ["step", "reset"])
def test_an_env_calling_sys_exit_errors_its_episode_and_the_run_saves_results_and_exits_1(tmp_path, capsys, exit_in):
    register_env_prefix("exitsin", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: ExitingWalkEnv(task))
    with running_server(ConstantPolicy()) as server:
        code = rollout(f"exitsin/{exit_in}", server.port, tmp_path / "run")
    out = capsys.readouterr().out
    assert code == 1
    assert "INCOMPLETE: 1 of 3 episodes errored" in out, out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    errors = {entry["episode_index"]: entry.get("error") for entry in results["per_episode"]}
    assert sorted(errors) == [0, 1, 2]
    assert "env called sys.exit(0)" in errors[1]
    assert errors[0] is None and errors[2] is None  # the episode after it ran


def test_an_adapter_calling_sys_exit_while_making_the_env_fails_the_task_in_one_line(tmp_path, capsys):
    register_env_prefix("exitsmaking", EmbodimentTag.NEW_EMBODIMENT, lambda task, **kwargs: sys.exit(0))
    with running_server(ConstantPolicy()) as server:
        code = rollout("exitsmaking/walk", server.port, tmp_path / "run")
    err = capsys.readouterr().err
    assert code == 2
    assert "no episode was scored: task exitsmaking/walk failed: env called sys.exit(0)" in err, err


def test_an_env_import_module_calling_sys_exit_is_refused_naming_it(tmp_path, capsys, monkeypatch):
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = rollout("walkto/fast", 9, tmp_path / "run", "--env-import", "exits_on_import")
    err = capsys.readouterr().err
    assert code == 2
    assert "--env-import exits_on_import: importing it called sys.exit(0)" in err, err
    assert not (tmp_path / "run").exists()


def test_help_still_exits_0_through_argparse(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["rollout", "--help"])
    assert stopped.value.code == 0
    assert "--env-import" in capsys.readouterr().out
