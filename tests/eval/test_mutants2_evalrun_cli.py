"""Audit 13b (mutation testing, rollout CLI): refusals and resume rules no earlier test pinned down."""

from __future__ import annotations

import pytest

from gr00t_eval.cli import main

ROLLOUT = ["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--policy-client-port", "9",
           "--timeout-ms", "500"]


@pytest.mark.parametrize("extra, expected", [
    (["--n-envs", "-1"], "--n-envs must be >= 0 (0 = auto), got -1"),
    (["--ray-cpus-per-shard", "inf", "--ray-address", "auto"], "--ray-cpus-per-shard must be a finite number > 0, got inf"),
    (["--env-timeout", "-1"], "--env-timeout must be seconds > 0, or 0 for no limit; got -1"),
    # shards drawing their own seeds would each run other scenes than the plan's episodes
    (["--shard", "0/2"], "--shard needs --seed (or $GR00T_EVAL_SEED)"),
])
def test_a_rollout_setting_out_of_range_is_one_line_before_anything_is_made(tmp_path, capsys, extra, expected):
    """Out-of-range rollout flags exit 2 naming the flag, before the output directory is made or a server asked."""
    out = tmp_path / "out"
    assert main([*ROLLOUT, "--output-dir", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()



def test_a_resume_given_env_timeout_runs_with_it_and_the_run_file_keeps_the_first(tmp_path):
    """--resume DIR --env-timeout 30 runs the rest with 30 s (a stalled run may resume with more time); the run file
    keeps the first attempt's 5 s."""
    import json

    from eval.scale_fixtures import ConstantPolicy
    from serving import running_server

    out = tmp_path / "run"
    with running_server(ConstantPolicy()) as server:
        port = ["--policy-client-port", str(server.port)]
        assert main(["rollout", "--env-name", "walkto/fast", "--n-episodes", "4", "--n-envs", "1", "--vectorization",
                     "sync", "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "0", "--no-video",
                     "--env-timeout", "5", "--output-dir", str(out), *port]) == 0
        log = out / "episodes.jsonl"
        log.write_text("".join(line + "\n" for line in log.read_text().splitlines()[:2]))  # two left to run
        assert main(["rollout", "--resume", str(out), "--env-timeout", "30", *port]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["per_episode"]) == 4 and results["config"]["env_timeout_s"] == 30.0
    assert json.loads((out / "run.json").read_text())["config"]["env_timeout_s"] == 5.0
