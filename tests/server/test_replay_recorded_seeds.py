"""The env seeds a replay reports for a dataset's episodes (meta/episodes.jsonl's "seed", as `gr00t-eval record`
stores it): a whole number written as a float is still that seed, and a seed that cannot be used, or episodes
without one among seeded ones, are named in a warning when the replay starts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from eval.dataset_factory import make_dataset
from gr00t_server.policies import ReplayPolicy

LENGTHS = (4, 4, 4)


def with_seeds(root: Path, seeds) -> Path:
    """Rewrite the dataset's meta/episodes.jsonl with `seeds` (one per episode; a missing one drops the field)."""
    path = root / "meta" / "episodes.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record, seed in zip(records, seeds):
        record.pop("seed", None)
        if seed is not ...:
            record["seed"] = seed
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return root


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "ds", lengths=LENGTHS, cameras=("image",))


def reset_seed(policy: ReplayPolicy, position: int):
    return policy.reset({"_session_id": "s", "episode_index": position}).get("seed")


def test_a_seed_written_as_an_integral_float_is_reported_as_that_seed(dataset, caplog):
    """pandas writes an int column that once held a NaN as 0.0, 1.0, ...; the replay dropped those seeds silently and
    a rollout replayed the recorded actions in other scenes (a plausible 0%)."""
    policy = ReplayPolicy(with_seeds(dataset, [0.0, 1.0, 2.0]))
    assert [reset_seed(policy, position) for position in range(3)] == [0, 1, 2]
    assert all(type(reset_seed(policy, position)) is int for position in range(3))
    assert "seed" not in caplog.text


def test_seeds_that_are_no_env_seed_are_named_by_position_once_at_start_up(dataset, caplog):
    with caplog.at_level(logging.WARNING, logger="gr00t_server.policies.recorded_seeds"):
        policy = ReplayPolicy(with_seeds(dataset, [0.5, float("nan"), -1]))
    warnings = [r.getMessage() for r in caplog.records if "seed" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "the 'seed' of 3 episodes is no env seed" in warnings[0]
    assert "position 0: 0.5, position 1: nan, position 2: -1" in warnings[0]
    assert [reset_seed(policy, position) for position in range(3)] == [None, None, None]


def test_episodes_without_a_seed_among_seeded_ones_are_named_at_start_up(dataset, caplog):
    with caplog.at_level(logging.WARNING, logger="gr00t_server.policies.recorded_seeds"):
        policy = ReplayPolicy(with_seeds(dataset, [7, ..., ...]))
    [warning] = [r.getMessage() for r in caplog.records if "seed" in r.getMessage()]
    assert "2 episodes have no recorded 'seed' while others have one" in warning and "positions [1, 2]" in warning
    assert [reset_seed(policy, position) for position in range(3)] == [7, None, None]


def test_a_dataset_without_seeds_starts_without_a_word_about_them(dataset, caplog):
    with caplog.at_level(logging.WARNING, logger="gr00t_server.policies.recorded_seeds"):
        ReplayPolicy(with_seeds(dataset, [..., ..., ...]))
    assert "seed" not in caplog.text


def test_a_replay_takes_every_seed_a_recording_may_store_and_no_larger_one(dataset):
    """The limit was defined twice, in gr00t-eval's record and gr00t-server's replay: one changed alone would record
    seeds the replay drops. Both take gr00t_client's."""
    from gr00t_client.codec import MAX_RECORDED_SEED
    from gr00t_eval import record
    from gr00t_server.policies import recorded_seeds

    assert record.MAX_RECORDED_SEED is MAX_RECORDED_SEED and recorded_seeds.MAX_RECORDED_SEED is MAX_RECORDED_SEED
    policy = ReplayPolicy(with_seeds(dataset, [MAX_RECORDED_SEED, MAX_RECORDED_SEED + 1, 0]))
    assert [reset_seed(policy, position) for position in range(3)] == [MAX_RECORDED_SEED, None, 0]
