"""Audit 13b (mutation testing, rollout CLI): a resume rule no earlier test pinned down (the up-front flag refusals it
found untested are in test_cli_edge_values.py)."""

from __future__ import annotations

from gr00t_eval.cli import main


def test_a_resume_given_env_timeout_runs_with_it_and_the_run_file_keeps_the_first(tmp_path):
    """--resume DIR --env-timeout 30 runs the rest with 30 s (a stalled run may resume with more time); the run file
    keeps the first attempt's 5 s."""
    import json

    from eval.scale_fixtures import ConstantPolicy
    from serving import running_server

    out = tmp_path / "run"
    with running_server(ConstantPolicy()) as server:
        port = ["--policy-client-port", str(server.port)]
        assert main(["rollout", "--env-name", "walkto/fast", "--n-episodes", "4", "--n-envs", "1",
                     "--vectorization", "async", "--n-action-steps", "2", "--max-episode-steps", "6", "--seed", "0", "--no-video",
                     "--env-timeout", "5", "--output-dir", str(out), *port]) == 0
        log = out / "episodes.jsonl"
        log.write_text("".join(line + "\n" for line in log.read_text().splitlines()[:2]))  # two left to run
        assert main(["rollout", "--resume", str(out), "--env-timeout", "30", *port]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["per_episode"]) == 4 and results["config"]["env_timeout_s"] == 30.0
    assert json.loads((out / "run.json").read_text())["config"]["env_timeout_s"] == 5.0
