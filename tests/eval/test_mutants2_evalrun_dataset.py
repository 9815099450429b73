"""Audit 13b (mutation testing, dataset meta files): reading rules no earlier test pinned down."""

from __future__ import annotations

import json

import pytest

from eval.dataset_factory import make_dataset
from gr00t_eval.dataset import DatasetError, LeRobotDataset


def _episode_lines(root):
    return (root / "meta" / "episodes.jsonl").read_text().splitlines()


def test_episodes_listed_past_info_total_episodes_are_not_read(tmp_path):
    """An episodes.jsonl with a complete line past info.json's total_episodes (a recording stopped between the two
    meta files) loads with total_episodes episodes, not the uncommitted one."""
    root = make_dataset(tmp_path / "ds", lengths=(6, 9, 4))
    lines = _episode_lines(root)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["total_episodes"] = 2
    (root / "meta" / "info.json").write_text(json.dumps(info))
    assert len(lines) == 3
    assert LeRobotDataset(root).num_episodes == 2


def test_an_episode_length_of_true_is_refused_not_read_as_one_step(tmp_path):
    """`"length": true` in episodes.jsonl is refused naming the field (bool is not an int there)."""
    root = make_dataset(tmp_path / "ds", lengths=(6, 9, 4))
    rows = [json.loads(line) for line in _episode_lines(root)]
    rows[1]["length"] = True
    (root / "meta" / "episodes.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DatasetError, match="field 'length' must be int, got True"):
        LeRobotDataset(root)
