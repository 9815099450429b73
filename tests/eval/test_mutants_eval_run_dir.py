"""Audit 13 (mutation testing): what a resumed run keeps from its earlier attempts."""

from __future__ import annotations

import pytest

from gr00t_eval.run_dir import EpisodeLog, add_earlier_eval_s


def test_the_latest_log_entry_of_an_episode_wins_when_the_log_is_read(tmp_path):
    """An errored episode rerun by --resume is logged twice: reading the log gives its later (finished) entry."""
    log = EpisodeLog(tmp_path / "episodes.jsonl")
    log.append({"task": "walkto/fast", "episode_index": 3, "success": None, "error": "env step raised"})
    log.append({"task": "walkto/fast", "episode_index": 4, "success": True, "error": None})
    log.append({"task": "walkto/fast", "episode_index": 3, "success": True, "error": None})
    entries = {e["episode_index"]: e for e in log.read()}
    assert len(log.read()) == 2 and entries[3]["error"] is None and entries[3]["success"] is True


def test_a_resumed_runs_eval_s_adds_the_earlier_attempts_and_eval_ep_s_counts_errored_episodes():
    """eval_s per task, group and overall is this attempt's plus the earlier one's; eval_ep_s divides by every
    episode run (finished and errored)."""
    def results(eval_s):
        task = {"group": "g", "eval_s": eval_s, "n_episodes": 3, "n_errors": 1}
        return {"per_task": {"walkto/fast": dict(task)}, "per_group": {"g": dict(task)}, "overall": dict(task)}

    resumed = results(6.0)
    add_earlier_eval_s(resumed, results(2.0))
    for entry in (resumed["per_task"]["walkto/fast"], resumed["per_group"]["g"], resumed["overall"]):
        assert entry["eval_s"] == pytest.approx(8.0) and entry["eval_ep_s"] == pytest.approx(2.0)
    assert resumed["aggregated"] is resumed["overall"]


@pytest.mark.parametrize("left", ["episodes", "results"])
def test_a_shard_refuses_a_directory_holding_its_own_episode_log_or_results_without_a_run_file(tmp_path, left):
    """Only this shard's log (or results) left, its run file gone: refused up front, not written into (the later
    run-file check does not see it), with --resume and --overwrite offered; the other shard's files are no bar."""
    from gr00t_eval.run_dir import OutputDirError, check_output_dir, episode_log_name, results_file_name, run_file_name
    from gr00t_eval.shard import ShardSpec

    mine, other = ShardSpec.parse("0/2"), ShardSpec.parse("1/2")
    own = [run_file_name(mine), episode_log_name(mine), results_file_name(mine)]
    (tmp_path / (episode_log_name(other))).write_text("")
    check_output_dir(tmp_path, own_files=own)  # the other shard's log alone: free for this shard
    name = episode_log_name(mine) if left == "episodes" else results_file_name(mine)
    (tmp_path / name).write_text("")
    with pytest.raises(OutputDirError, match=rf"already holds {name}; pass --resume .*--overwrite"):
        check_output_dir(tmp_path, own_files=own)
    check_output_dir(tmp_path, overwrite=True, own_files=own)
