"""Embodiment tags as users type them: make-test-checkpoint writes a built-in tag by its value with its projector
(it wrote 'LIBERO_SIM' with a free index, a checkpoint no spelling could serve), and one tag's invalid statistics do
not stop the warm-up of another (the sample observation read every tag's statistics strictly). Real checkpoint files
and the real CLI."""

from __future__ import annotations

import json

import pytest

from gr00t_client.embodiment import EMBODIMENT_TAG_TO_PROJECTOR_INDEX
from gr00t_server import cli
from gr00t_server.test_checkpoint import example_observation


@pytest.mark.parametrize("typed", ["LIBERO_SIM", " Libero_Sim", "libero_sim"])
def test_make_test_checkpoint_writes_a_built_in_tag_by_its_value_and_projector(tmp_path, typed):
    out = tmp_path / "ckpt"
    assert cli.main(["make-test-checkpoint", str(out), "--embodiment", "libero", "--embodiment-tag", typed]) == 0
    assert list(json.loads((out / "processor_config.json").read_text())["processor_kwargs"]["modality_configs"]) == ["libero_sim"]
    assert json.loads((out / "embodiment_id.json").read_text())["libero_sim"] == EMBODIMENT_TAG_TO_PROJECTOR_INDEX["libero_sim"]


def test_a_tag_of_ones_own_robot_is_written_as_typed(tmp_path):
    out = tmp_path / "ckpt"
    assert cli.main(["make-test-checkpoint", str(out), "--embodiment", "new_embodiment", "--embodiment-tag", "my_robot"]) == 0
    assert "my_robot" in json.loads((out / "embodiment_id.json").read_text())


def test_the_sample_observation_of_one_tag_ignores_another_tags_invalid_statistics(copy_of):
    checkpoint = copy_of()
    path = checkpoint / "statistics.json"
    stats = json.loads(path.read_text())
    first_key = next(iter(stats["libero_sim"]["action"]))
    stats["libero_sim"]["action"][first_key]["max"][0] = float("nan")
    path.write_text(json.dumps(stats))
    observation = example_observation(checkpoint, "new_embodiment")  # warm-up's sample; it raised for libero_sim's NaN
    assert set(observation) == {"video", "state", "language"}


def test_serve_takes_a_checkpoint_tag_that_spells_a_built_in_name_as_the_checkpoints_own(tmp_path, monkeypatch):
    # An N1.6-era checkpoint tag 'libero_panda' is also a built-in enum name (for libero_sim): serve resolved the enum
    # first and served libero_sim, where Gr00tPolicy in Python served the checkpoint's libero_panda.
    from gr00t_server import server as server_module
    from gr00t_server.test_checkpoint import make_test_checkpoint

    checkpoint = make_test_checkpoint(tmp_path / "ckpt", embodiment_tags=["libero_panda", "new_embodiment"],
                                      embodiment="libero")
    made = {}

    class Captured:
        batching_enabled = False

        def __init__(self, policy, **kwargs):
            made.update(policy=policy, **kwargs)

        def start(self):
            pass

    monkeypatch.setattr(server_module, "PolicyServer", Captured)
    args = cli.build_parser().parse_args(["serve", "--model-path", str(checkpoint), "--embodiment-tag", "libero_panda",
                                          "--device", "cpu", "--no-warmup"])
    cli._start_server(args)
    assert made["policy"].embodiment_tag_value == "libero_panda" and made["embodiment_tag"] == "libero_panda"


def test_a_checkpoints_own_tag_is_matched_in_any_case_as_the_help_says(tmp_path):
    # `serve --help` says tags are case-insensitive; a checkpoint's own tag ('my_robot') was matched only exactly.
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import make_test_checkpoint

    checkpoint = make_test_checkpoint(tmp_path / "ckpt", embodiment_tags=["my_robot"], embodiment="new_embodiment")
    policy = Gr00tPolicy(checkpoint, " MY_Robot ", device="cpu")
    assert policy.embodiment_tag_value == "my_robot"


def test_a_spelling_two_checkpoint_tags_share_is_refused_naming_both(tmp_path):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import make_test_checkpoint

    checkpoint = make_test_checkpoint(tmp_path / "ckpt", embodiment_tags=["my_robot", "MY_ROBOT"])
    assert Gr00tPolicy(checkpoint, "MY_ROBOT", device="cpu").embodiment_tag_value == "MY_ROBOT"  # exact first
    with pytest.raises(ValueError, match=r"'MY_ROBOT', 'my_robot'.*differ only in case"):
        Gr00tPolicy(checkpoint, "My_Robot", device="cpu")


def test_a_relative_mean_std_action_key_without_relative_mean_and_std_is_refused_at_load(copy_of):
    """It loaded, and every get_action failed after the model had run (serve's warm-up caught it, Python did not)."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    checkpoint = copy_of()
    config_path, stats_path = checkpoint / "processor_config.json", checkpoint / "statistics.json"
    config, stats = json.loads(config_path.read_text()), json.loads(stats_path.read_text())
    config["processor_kwargs"]["modality_configs"]["new_embodiment"]["action"]["mean_std_embedding_keys"] = ["joints"]
    for name in ("mean", "std"):
        stats["new_embodiment"]["relative_action"]["joints"].pop(name)
    config_path.write_text(json.dumps(config))
    stats_path.write_text(json.dumps(stats))
    with pytest.raises(ValueError, match=r"Relative action statistics for key 'joints' of 'new_embodiment' lack "
                                         r"'mean' \(the key is in mean_std_embedding_keys\)"):
        Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
