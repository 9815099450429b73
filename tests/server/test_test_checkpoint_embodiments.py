"""make-test-checkpoint's key sets: the gr00t-eval env adapters' keys, a dataset's keys and statistics, and a
processor_config.json the released upstream processor accepts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gr00t_server.test_checkpoint import (
    EMBODIMENT_SPECS,
    make_test_checkpoint,
    modality_configs_for,
    processor_kwargs_for,
    statistics_for,
)


def test_processor_kwargs_leave_out_strict_action_padding_mask_when_false():
    kwargs = processor_kwargs_for(["new_embodiment"], "m", 132, 132, 40)
    assert "strict_action_padding_mask" not in kwargs  # upstream 626af89's processor raises TypeError on the key


def test_processor_kwargs_write_strict_action_padding_mask_when_true():
    kwargs = processor_kwargs_for(["new_embodiment"], "m", 132, 132, 40, strict_action_padding_mask=True)
    assert kwargs["strict_action_padding_mask"] is True


def test_metaworld_key_set_is_the_adapters():
    from gr00t_eval.rollout.adapters import metaworld

    configs = modality_configs_for("new_embodiment", EMBODIMENT_SPECS["metaworld"])
    assert configs["video"].modality_keys == [metaworld.DEFAULT_CAMERA]
    assert configs["state"].modality_keys == list(metaworld.STATE_SLICES)
    assert configs["action"].modality_keys == list(metaworld.ACTION_DIMS)
    assert configs["language"].modality_keys == [metaworld.LANGUAGE_KEY]
    stats = statistics_for("new_embodiment", spec=EMBODIMENT_SPECS["metaworld"])
    assert {k: len(v["max"]) for k, v in stats["state"].items()} == {k: b - a for k, (a, b) in metaworld.STATE_SLICES.items()}
    assert {k: len(v["max"]) for k, v in stats["action"].items()} == metaworld.ACTION_DIMS


def test_pusht_statistics_span_the_board():
    stats = statistics_for("new_embodiment", spec=EMBODIMENT_SPECS["pusht"])
    assert stats["action"]["agent_pos"]["min"] == [0.0, 0.0] and stats["action"]["agent_pos"]["max"] == [512.0, 512.0]
    assert "relative_action" not in stats


def test_unknown_embodiment_is_refused_with_the_known_ones(tmp_path):
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"unknown embodiment 'mujoco'; expected one of \['libero', 'metaworld'"):
        make_test_checkpoint(tmp_path / "c", embodiment="mujoco")


@pytest.mark.slow
def test_pusht_checkpoint_serves_actions_on_the_board(tmp_path):
    pytest.importorskip("torch")
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.policies.sim_wrapper import Gr00tSimPolicyWrapper

    ckpt = make_test_checkpoint(tmp_path / "pusht", embodiment="pusht", embodiment_tags=["new_embodiment"])
    kwargs = json.loads((ckpt / "processor_config.json").read_text())["processor_kwargs"]
    assert list(kwargs["modality_configs"]) == ["new_embodiment"]
    policy = Gr00tSimPolicyWrapper(Gr00tPolicy(model_path=str(ckpt), embodiment_tag="new_embodiment", device="cpu"))
    observation = {
        "video.image": np.zeros((1, 1, 96, 96, 3), np.uint8),
        "state.agent_pos": np.full((1, 1, 2), 256.0, np.float32),
        "annotation.human.action.task_description": ("push the T-shaped block onto the T-shaped target",),
    }
    action, _ = policy.get_action(observation)
    assert action["action.agent_pos"].shape == (1, 16, 2)
    assert np.all(action["action.agent_pos"] >= 0.0) and np.all(action["action.agent_pos"] <= 512.0)


def test_cli_refuses_an_embodiment_tag_given_without_a_key_set(tmp_path, capsys):
    """Alone, --embodiment-tag used to be ignored: the checkpoint held new_embodiment and libero_sim, and serving it
    with the tag the user had asked for failed."""
    from gr00t_server import cli

    rc = cli.main(["make-test-checkpoint", str(tmp_path / "ckpt"), "--embodiment-tag", "my_robot"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == ("gr00t-server make-test-checkpoint: error: --embodiment-tag my_robot needs --embodiment or "
                   "--dataset-path (the key set to write under that tag), e.g. --embodiment new_embodiment "
                   "--embodiment-tag my_robot; without them the checkpoint holds new_embodiment and libero_sim\n")
    assert not (tmp_path / "ckpt").exists()


def test_cli_writes_the_tag_asked_for_with_a_key_set(tmp_path, capsys):
    from gr00t_server import cli

    assert cli.main(["make-test-checkpoint", str(tmp_path / "ckpt"), "--embodiment", "metaworld", "--embodiment-tag",
                     "my_robot"]) == 0
    assert "(tag my_robot, keys of the metaworld env)" in capsys.readouterr().out
    assert list(json.loads((tmp_path / "ckpt" / "embodiment_id.json").read_text())) == ["my_robot"]
