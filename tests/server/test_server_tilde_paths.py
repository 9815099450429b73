"""A path the shell left with its '~' (`--flag=~/x`, a quoted '~/x', an exec-form Docker CMD) is the home folder's in
every gr00t-server path flag, as it was in --model-path and the CURVE key flags. Before, --dataset-path,
--modality-config-path and make-test-checkpoint OUTPUT read or made a folder literally named '~' in the working
directory: `serve --dataset-path=~/ds` said "~/ds is not a directory" of a dataset that is there."""

from __future__ import annotations

import numpy as np
import pytest

from eval.dataset_factory import expected_actions, make_dataset
from gr00t_client import PolicyClient
from gr00t_server import cli
from serving import free_port, served


@pytest.mark.parametrize("argv, dest", [
    (["serve", "--dataset-path=~/x"], "dataset_path"),
    (["serve", "--modality-config-path=~/x"], "modality_config_path"),
    (["serve", "--onnx-dir=~/x"], "onnx_dir"),
    (["serve", "--engine-dir=~/x"], "engine_dir"),
    (["make-test-checkpoint", "~/x"], "output"),
    (["make-test-checkpoint", "c", "--dataset-path=~/x"], "dataset_path"),
    (["keygen", "~/x"], "directory"),
    (["export", "--model-path", "m", "--output=~/x"], "output"),
    (["build-engine", "--onnx-dir=~/x", "--engine-dir", "e"], "onnx_dir"),
    (["build-engine", "--onnx-dir", "o", "--engine-dir=~/x"], "engine_dir"),
    (["verify", "--model-path", "m", "--onnx-dir=~/x"], "onnx_dir"),
    (["verify", "--model-path", "m", "--engine-dir=~/x"], "engine_dir"),
])
def test_every_path_flag_takes_a_leading_tilde_as_the_home_folder(home, argv, dest):
    assert getattr(cli.build_parser().parse_args(argv), dest) == str(home / "x")


def test_serve_dataset_path_given_as_tilde_after_equals_replays_the_home_folders_dataset(home):
    make_dataset(home / "ds", lengths=(9,))
    port = free_port()
    with served("serve", "--dataset-path=~/ds", "--port", str(port)):
        with PolicyClient(port=port, timeout_ms=10000) as client:
            client.reset({"episode_index": 0})
            action, _ = client.get_action({})
    np.testing.assert_array_equal(action["arm"][0, :9], expected_actions(0, 9)["arm"])


def test_make_test_checkpoint_into_tilde_writes_in_the_home_folder(home, tmp_path):
    assert cli.main(["make-test-checkpoint", "~/ck"]) == 0
    assert (home / "ck" / "config.json").is_file()
    assert not (tmp_path / "work" / "~").exists()


def test_make_test_checkpoint_from_python_into_tilde_writes_in_the_home_folder(home, tmp_path):
    """The CLI expanded '~' and every reader does; from Python it wrote ./~/ck, and a later load of '~/ck' read the
    home folder's (missing or stale) checkpoint."""
    from gr00t_server.test_checkpoint import make_test_checkpoint

    written = make_test_checkpoint("~/ck2")
    assert written == home / "ck2" and (home / "ck2" / "config.json").is_file()
    assert not (tmp_path / "work" / "~").exists()
