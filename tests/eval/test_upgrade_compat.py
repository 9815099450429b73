"""Files an older gr00t-eval wrote, used after an upgrade: a batch job saved before a setting existed, a run or
shard recorded against a server that gave no checkpoint identity or no policy at all, and a run's default video
folder saved as a relative path."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from eval.scale_fixtures import policy_server

from gr00t_eval.batch import changed_settings, parse_job, planned_config, prepare_job_dir
from gr00t_eval.cli import main
from gr00t_eval.policy_identity import policy_record, same_policy


def test_a_job_saved_before_a_setting_existed_is_not_rerun_after_an_upgrade(tmp_path, caplog):
    job = parse_job({"name": "j", "env_name": "walkto/fast", "n_episodes": 2, "seed": 0,
                     "policy_server": {"port": 5555}}, 0)
    config = job.rollout_config()
    older = planned_config(config)
    del older["env_timeout_s"]  # not written before --env-timeout existed
    assert changed_settings(job, {"job_config": older}) == ""
    job_dir = tmp_path / "j"
    job_dir.mkdir()
    (job_dir / "run.json").write_text(json.dumps({"job_config": older, "config": {**older, "seed": 0}, "policy": None}))
    (job_dir / "episodes.jsonl").write_text(json.dumps({"task": "walkto/fast", "episode_index": 0, "seed": 0,
                                                        "success": True, "sum_reward": 1.0, "max_reward": 1.0,
                                                        "length": 2, "env_index": 0}) + "\n")
    with caplog.at_level(logging.WARNING):
        _config, done = prepare_job_dir(job_dir, config, None)
    assert [o.episode_index for o in done] == [0]  # kept, not run again
    assert not (job_dir / "episodes.replaced.jsonl").exists() and "changed" not in caplog.text


def test_a_policy_recorded_from_a_server_without_checkpoint_identity_matches_the_same_policy_upgraded(tmp_path):
    with policy_server() as server:
        from gr00t_client import PolicyClient

        with PolicyClient(host="127.0.0.1", port=server.port, timeout_ms=5000) as client:
            current = policy_record(client)
    assert current is not None
    # What an older gr00t-server's record held: no identity, and the fingerprint of everything else.
    older = {k: v for k, v in current.items() if k not in ("fingerprint", "fingerprint_without_identity")}
    older.update(identity=None, fingerprint=current["fingerprint_without_identity"])
    upgraded = {**current, "identity": {"weights_fingerprint": "abc"}, "fingerprint": "f" * 16}
    assert same_policy(older, upgraded) and same_policy(upgraded, older)
    other = {**older, "fingerprint": "0" * 16}  # another policy's configs
    assert not same_policy(other, upgraded)


def test_resuming_a_run_that_recorded_no_policy_says_its_server_cannot_be_checked(tmp_path, caplog, monkeypatch):
    out = tmp_path / "run"
    args = ["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures", "--output-dir", str(out),
            "--timeout-ms", "5000", "--n-episodes", "3", "--seed", "0", "--n-envs", "1", "--n-action-steps", "2",
            "--max-episode-steps", "6", "--vectorization", "sync"]
    with policy_server() as server:
        assert main([*args, "--policy-client-port", str(server.port)]) == 0
        run = json.loads((out / "run.json").read_text())
        assert run["default_video_dir"] is True
        assert run["config"]["video_dir"] == str(out / "videos") and os.path.isabs(run["config"]["video_dir"])
        # an older gr00t-eval's run file: no policy, no default_video_dir, the default video folder relative
        del run["policy"], run["default_video_dir"]
        run["config"]["video_dir"] = os.path.join("run", "videos")
        (out / "run.json").write_text(json.dumps(run))
        lines = (out / "episodes.jsonl").read_text().splitlines()
        (out / "episodes.jsonl").write_text("\n".join(lines[:2]) + "\n")  # the third episode did not run
        (out / "results.json").unlink()
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        with caplog.at_level(logging.WARNING):
            assert main(["rollout", "--resume", str(out), "--policy-client-port", str(server.port)]) == 0
    assert "recorded no policy for its 2 earlier episodes" in caplog.text
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["video_dir"] == str(out / "videos")  # the resumed run's own, not ./run/videos here
    assert not (elsewhere / "run").exists()
    assert json.loads((out / "run.json").read_text())["policy"]["fingerprint"]  # recorded from now on
