"""info.json's data_path / video_path templates are anyone's text: a filled-in path is bounded in length and stays
inside the dataset folder, and a refusal is one short line naming the field (audit 11, security finding 2)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from eval.dataset_factory import CAMERAS, make_dataset
from gr00t_eval.dataset import DatasetError, LeRobotDataset

LENGTHS = (5, 4, 3)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A real v2.1 dataset and a real v3.0 one (two episodes in its first file), as DatasetWriter writes them."""
    return {layout: make_dataset(tmp_path_factory.mktemp(layout) / "ds", lengths=LENGTHS, layout=layout, episodes_per_file=2)
            for layout in ("v2.1", "v3.0")}


def _with_info(datasets, tmp_path, layout: str, **fields) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(datasets[layout], root)
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info.update(fields)
    info_path.write_text(json.dumps(info))
    return root


@pytest.mark.parametrize("layout", ["v2.1", "v3.0"])
def test_lerobots_own_templates_still_read_every_episode(datasets, layout):
    dataset = LeRobotDataset(datasets[layout])
    assert dataset.episode_lengths == list(LENGTHS)
    assert all(dataset.episode(i).actions("arm").shape[0] == n for i, n in enumerate(LENGTHS))
    assert dataset.episode(2).frames(CAMERAS[0], [0]).shape == (1, 32, 32, 3)


@pytest.mark.parametrize("layout, field, template", [
    ("v2.1", "data_path", "data/{episode_index:>10000000}.parquet"),
    ("v3.0", "data_path", "data/chunk-{chunk_index:03d}/file-{file_index:>10000000}.parquet"),
    ("v2.1", "video_path", "videos/{video_key}/{episode_index:.10000000f}.mp4"),
    ("v2.1", "data_path", "data/{episode_index:>{episode_index}}.parquet"),  # a width taken from the episode list
    ("v2.1", "data_path", "data/" + "x" * 100_000 + "{episode_index}.parquet"),
])
def test_a_template_that_fills_in_to_a_huge_path_is_refused_in_one_short_line(datasets, tmp_path, layout, field, template):
    root = _with_info(datasets, tmp_path, layout, **{field: template})
    started = time.monotonic()
    with pytest.raises(DatasetError) as caught:
        LeRobotDataset(root)
    message = str(caught.value)
    assert f"field '{field}'" in message and len(message) < 600, message[:600]
    assert "\n" not in message
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("field, template", [
    ("data_path", "{outside}/secret_{episode_index:06d}.parquet"),
    ("data_path", "../outside/secret_{episode_index:06d}.parquet"),
    ("data_path", "data/../../outside/secret_{episode_index:06d}.parquet"),
    ("video_path", "../videos/{video_key}/episode_{episode_index:06d}.mp4"),
])
def test_a_template_that_points_outside_the_dataset_folder_is_refused_naming_field_and_value(datasets, tmp_path, field, template):
    outside = tmp_path / "outside"
    outside.mkdir()
    template = template.replace("{outside}", str(outside))
    for episode in range(len(LENGTHS)):  # the files are there: only the template's place is wrong
        shutil.copy(datasets["v2.1"] / "data" / "chunk-000" / f"episode_{episode:06d}.parquet",
                    outside / f"secret_{episode:06d}.parquet")
    root = _with_info(datasets, tmp_path, "v2.1", **{field: template})
    with pytest.raises(DatasetError, match=rf"field '{field}' .*outside the dataset folder") as caught:
        LeRobotDataset(root)
    assert repr(template) in str(caught.value)


def test_serve_with_a_huge_template_exits_2_with_one_short_line_naming_the_field(datasets, tmp_path, capsys):
    from gr00t_server.cli import main

    root = _with_info(datasets, tmp_path, "v2.1", data_path="data/{episode_index:>10000000}.parquet")
    assert main(["serve", "--dataset-path", str(root), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "gr00t-server serve: error:" in err and "field 'data_path'" in err
    assert len(err) < 1000, err[:1000]
