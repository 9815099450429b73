"""Bookkeeping that must not grow with the run: a resumed task's episodes-left list and a batch's combined file."""

from __future__ import annotations

import dataclasses

from eval.scale_fixtures import ConstantPolicy
from gr00t_eval.metrics import EpisodeOutcome
from gr00t_eval.rollout.runner import RolloutConfig
from gr00t_eval.suites import Task, run_task


@dataclasses.dataclass
class CountedOutcome(EpisodeOutcome):
    """An outcome that counts how often its episode index is read."""

    def __post_init__(self) -> None:
        self.reads = 0

    @property  # type: ignore[override]
    def episode_index(self) -> int:
        self.reads += 1
        return self._episode_index

    @episode_index.setter
    def episode_index(self, value: int) -> None:
        self._episode_index = value


def _most_index_reads_on_resume(n_episodes: int) -> int:
    config = RolloutConfig("walkto/fast", n_episodes=n_episodes, n_envs=1, seed=0, max_episode_steps=6,
                           n_action_steps=2, vectorization="sync")
    done = [CountedOutcome(i, config.seed_for(i), True, 1.0, 1.0, 3) for i in range(n_episodes)]
    run = run_task(ConstantPolicy(), Task("walkto/fast", "walkto"), config, done=done)
    assert len(run.outcomes) == n_episodes and run.error is None
    return max(outcome.reads for outcome in done)


def test_a_resumed_tasks_episodes_left_reads_each_kept_episode_a_fixed_number_of_times():
    # the set of kept episodes was built again for every episode: O(episodes x kept) before a resumed task ran
    assert _most_index_reads_on_resume(40) == _most_index_reads_on_resume(10)


class CountedResults(dict):
    """A job's results that count how often they are read item by item (each encoding into JSON reads them once)."""

    encodings = 0

    def items(self):
        self.encodings += 1
        return super().items()


def _real_job_record(tmp_path):
    """The record of one real walkto job of 3 episodes, as run_batch keeps it."""
    from gr00t_eval.batch import Job, PolicyServerAddress, run_batch

    settings = {"n_episodes": 3, "n_envs": 1, "seed": 0, "max_episode_steps": 6, "n_action_steps": 2,
                "vectorization": "sync"}
    (tmp_path / "real").mkdir()
    batch = run_batch([Job("real", "walkto/fast", PolicyServerAddress("127.0.0.1", 1), settings)],
                      tmp_path / "real" / "batch_results.json", policy_factory=lambda _server: ConstantPolicy())
    record = batch["jobs"][0]
    assert record["status"] == "done", record
    return record, settings


def test_a_batch_encodes_each_finished_jobs_results_once_however_many_jobs_follow(tmp_path, monkeypatch):
    # every job's save encoded all earlier jobs' per-episode results again: O(jobs^2) over a batch
    import copy

    import gr00t_eval.batch as batch_module
    from gr00t_eval.batch import Job, PolicyServerAddress, run_batch

    record, settings = _real_job_record(tmp_path)
    finished = []

    def job_done(job, *_args, **_kwargs):
        done = {**copy.deepcopy(record), "name": job.name}
        done["results"] = CountedResults(done["results"])
        finished.append(done["results"])
        return done

    monkeypatch.setattr(batch_module, "run_job", job_done)
    jobs = [Job(f"j{i}", "walkto/fast", PolicyServerAddress("127.0.0.1", 1), dict(settings)) for i in range(5)]
    run_batch(jobs, tmp_path / "batch_results.json", policy_factory=lambda _server: ConstantPolicy())
    assert [results.encodings for results in finished] == [1] * 5


def test_batch_results_json_is_the_indented_json_of_the_batch_it_returns(tmp_path):
    import json

    from gr00t_eval.batch import Job, JobError, PolicyServerAddress, run_batch
    from gr00t_eval.results import _jsonable

    settings = {"n_episodes": 2, "n_envs": 1, "seed": 0, "max_episode_steps": 6, "n_action_steps": 2,
                "vectorization": "sync"}
    server = PolicyServerAddress("127.0.0.1", 1)
    jobs = [Job("fast", "walkto/fast", server, dict(settings)), JobError("no env_name", job_name="broken"),
            Job("nowhere", "walkto/unknown", server, dict(settings)), Job("slow", "walkto/slow", server, dict(settings))]
    out = tmp_path / "batch_results.json"
    batch = run_batch(jobs, out, policy_factory=lambda _server: ConstantPolicy())
    assert [r["status"] for r in batch["jobs"]] == ["done", "failed", "failed", "done"]
    assert out.read_text() == json.dumps(_jsonable(batch), indent=2) + "\n"
