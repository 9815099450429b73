"""rollout --resume reads the run's episodes.jsonl once: the episodes kept and the earlier attempts' time stamps come
from one read (it read the file twice, and warned of a line cut short by a crash twice)."""

from __future__ import annotations

import json
import logging

from eval.scale_fixtures import SigintOnCall, policy_server
from gr00t_eval.cli import main

SMALL = ["--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6", "--no-video", "--vectorization", "sync",
         "--timeout-ms", "5000", "--env-import", "eval.scale_fixtures"]


def test_a_resume_reads_the_episode_log_once_and_keeps_the_earlier_attempts_episodes_and_time(tmp_path, caplog,
                                                                                              monkeypatch):
    from gr00t_eval.episode_log import EpisodeLog

    out = tmp_path / "run"
    with policy_server(SigintOnCall(call=10)) as server:
        assert main(["--log-level", "WARNING", "rollout", "--env-name", "walkto/slow", "--policy-client-port",
                     str(server.port), "--output-dir", str(out), "--seed", "3", "--n-episodes", "8", *SMALL]) == 130
        log = out / "episodes.jsonl"
        kept = len(log.read_text().splitlines())
        assert 0 < kept < 8
        with log.open("a") as handle:  # a crash mid-write: a line cut short
            handle.write('{"task": "walkto/slow", "episode_ind')
        reads = []
        entries = EpisodeLog.entries
        monkeypatch.setattr(EpisodeLog, "entries", lambda self: (reads.append(self.path), entries(self))[1])
        with caplog.at_level(logging.WARNING, logger="gr00t_eval.episode_log"):
            assert main(["--log-level", "WARNING", "rollout", "--resume", str(out), "--policy-client-port",
                         str(server.port), "--timeout-ms", "5000", "--env-import", "eval.scale_fixtures"]) == 0
    assert reads.count(log) == 1, reads
    assert len([r for r in caplog.records if "is not complete JSON" in r.getMessage()]) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and results["overall"]["n_episodes"] == 8
    attempts = {json.loads(line)["attempt"] for line in log.read_text().splitlines() if line.endswith("}")}
    assert len(attempts) == 2  # both attempts' episodes kept; the earlier one's time is added to eval_s
    assert results["overall"]["eval_s"] > 0


def test_a_batch_resume_reads_each_jobs_episode_log_once(tmp_path, caplog, monkeypatch):
    from gr00t_eval.episode_log import EpisodeLog

    out, jobs = tmp_path / "batch", tmp_path / "jobs.json"
    with policy_server(SigintOnCall(call=10)) as server:
        jobs.write_text(json.dumps({
            "defaults": {"policy_server": {"port": server.port}, "n_episodes": 8, "seed": 3, "max_episode_steps": 6,
                         "overrides": {"n_action_steps": 2, "vectorization": "sync", "n_envs": 1}},
            "jobs": [{"name": "slow", "env_name": "walkto/slow"}]}))
        assert main(["--log-level", "WARNING", "batch", "--jobs", str(jobs), "--output-dir", str(out)]) == 130
        log = out / "jobs" / "slow" / "episodes.jsonl"
        assert 0 < len(log.read_text().splitlines()) < 8
        with log.open("a") as handle:  # a crash mid-write: a line cut short
            handle.write('{"task": "walkto/slow", "episode_ind')
        reads = []
        entries = EpisodeLog.entries
        monkeypatch.setattr(EpisodeLog, "entries", lambda self: (reads.append(self.path), entries(self))[1])
        with caplog.at_level(logging.WARNING, logger="gr00t_eval.episode_log"):
            assert main(["--log-level", "WARNING", "batch", "--resume", str(out)]) == 0
    assert reads.count(log) == 1, reads
    assert len([r for r in caplog.records if "is not complete JSON" in r.getMessage()]) == 1
    results = json.loads((out / "jobs" / "slow" / "results.json").read_text())
    assert results["status"] == "complete" and results["overall"]["n_episodes"] == 8
    assert results["overall"]["eval_s"] > 0
