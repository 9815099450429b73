"""Edge values the CLI audit fed gr00t-server: a test checkpoint's seed out of range, empty names, a metrics port
equal to the serving port and a host that cannot be bound (refused before a model loads), frames too large to
export, and CURVE settings from environment variables."""

from __future__ import annotations

import time

import pytest

from gr00t_server.cli import main


def test_make_test_checkpoint_refuses_a_seed_out_of_range_before_writing(tmp_path, capsys):
    for seed in ("-1", str(2**32), str(2**64)):  # torch keeps 32 bits: 2**32 wrote seed 0's weights
        assert main(["make-test-checkpoint", str(tmp_path / "ckpt"), "--seed", seed]) == 2
        assert f"--seed must be a whole number from 0 to 2**32 - 1, got {seed}" in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()
    assert main(["make-test-checkpoint", str(tmp_path / "ckpt"), "--embodiment", "libero", "--embodiment-tag", ""]) == 2
    assert "--embodiment-tag must not be empty" in capsys.readouterr().err


def test_make_test_checkpoint_function_refuses_a_seed_torch_would_cut_to_32_bits(tmp_path):
    from gr00t_server.test_checkpoint import make_test_checkpoint

    with pytest.raises(ValueError, match=r"seed must be a whole number from 0 to 2\*\*32 - 1, got 4294967296"):
        make_test_checkpoint(tmp_path / "ckpt", seed=2**32)
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("link, expected", [
    ("dangling", "output folder {tmp}/dangling is a symbolic link to {tmp}/missing, which does not exist"),
    ("loop1", "output folder {tmp}/loop1 is a symlink loop"),
])
def test_make_test_checkpoint_into_a_dangling_link_or_a_symlink_loop_names_it(tmp_path, capsys, link, expected):
    """It said "[Errno 17] File exists: 'dangling'" of a folder that does not exist."""
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    assert main(["make-test-checkpoint", str(tmp_path / link)]) == 2
    assert expected.format(tmp=tmp_path) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "loop1", "loop2"]


def test_make_test_checkpoint_refuses_a_blank_output_and_leaves_the_current_folder_alone(tmp_path, capsys,
                                                                                         monkeypatch):
    """`make-test-checkpoint "$CKPT" --overwrite`, CKPT unset, emptied the current folder and wrote a checkpoint
    there."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("precious\n")
    assert main(["make-test-checkpoint", "", "--overwrite"]) == 2
    assert ("gr00t-server make-test-checkpoint: error: OUTPUT is empty: an unset variable? Expected the folder to "
            "write the checkpoint into (use . for the current one)") in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_make_test_checkpoint_refuses_a_blank_dataset_path_naming_it(tmp_path, capsys):
    assert main(["make-test-checkpoint", str(tmp_path / "ckpt"), "--dataset-path", ""]) == 2
    assert ("gr00t-server make-test-checkpoint: error: --dataset-path is empty: an unset variable? Expected a recorded "
            "LeRobot dataset directory") in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()


def test_keygen_refuses_an_empty_directory_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["keygen", ""]) == 2
    assert "DIRECTORY must name a folder (use . for the current one)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_keygen_into_a_file_and_a_modality_config_that_is_a_folder_are_named_as_such(tmp_path, capsys):
    # "[Errno 17] File exists" and "modality config file not found" of paths that are there
    from eval.dataset_factory import make_dataset

    (tmp_path / "afile").write_text("x")
    assert main(["keygen", str(tmp_path / "afile")]) == 2
    assert f"DIRECTORY {tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    assert main(["serve", "--dataset-path", str(make_dataset(tmp_path / "dataset", cameras=())),
                 "--modality-config-path", str(tmp_path)]) == 2
    assert f"modality config path {tmp_path} is a folder; expected a .json or .py file" in capsys.readouterr().err


@pytest.mark.parametrize("extra, expected", [
    (["--port", "47111", "--metrics-port", "47111"], "--metrics-port 47111 is also --port"),
    (["--host", "not a host"], "--host not a host: not an IP address, and the name does not resolve"),
])
def test_serve_refuses_ports_and_hosts_it_cannot_bind_before_loading(tmp_path, capsys, extra, expected):
    from eval.dataset_factory import make_dataset

    dataset = make_dataset(tmp_path / "dataset")
    started = time.monotonic()
    assert main(["serve", "--dataset-path", str(dataset), *extra]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Server is ready" not in err
    assert time.monotonic() - started < 10


def test_authorized_keys_from_the_environment_without_a_secret_key_names_both(tmp_path, capsys, monkeypatch):
    from eval.dataset_factory import make_dataset

    monkeypatch.setenv("GR00T_AUTHORIZED_KEYS", str(tmp_path))
    monkeypatch.delenv("GR00T_CURVE_SECRET_KEY", raising=False)
    assert main(["serve", "--dataset-path", str(make_dataset(tmp_path / "dataset"))]) == 2
    assert "--authorized-keys (or $GR00T_AUTHORIZED_KEYS) needs --curve-secret-key (or $GR00T_CURVE_SECRET_KEY)" in \
        capsys.readouterr().err


def test_export_refuses_frames_larger_than_any_camera(tmp_path, capsys):
    assert main(["export", "--model-path", str(tmp_path), "--output", str(tmp_path / "onnx"),
                 "--image-size", "100000", "100000"]) == 2
    assert "--image-size takes HEIGHT WIDTH of the cameras' frames, each from 16 to 4096; got 100000 100000" in \
        capsys.readouterr().err


@pytest.mark.parametrize("argv, blank", [
    (["export", "--model-path", "", "--output", "onnx"], "--model-path"),
    (["export", "--model-path", "/nonexistent/ckpt", "--output", ""], "--output"),
    (["build-engine", "--onnx-dir", "", "--engine-dir", "engines"], "--onnx-dir"),
    (["build-engine", "--onnx-dir", "onnx", "--engine-dir", ""], "--engine-dir"),
    (["verify", "--model-path", "", "--torch-compile"], "--model-path"),
    (["verify", "--model-path", "/nonexistent/ckpt", "--onnx-dir", ""], "--onnx-dir"),
    (["verify", "--model-path", "/nonexistent/ckpt", "--engine-dir", ""], "--engine-dir"),
])
def test_backend_commands_refuse_a_blank_path_naming_it_and_leave_the_current_folder_alone(tmp_path, capsys,
                                                                                          monkeypatch, argv, blank):
    """A blank folder ("$DIR", DIR unset) is the current folder to Path(): an export or engines written there."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert f"gr00t-server {argv[0]}: error: {blank} is empty: an unset variable? Expected " in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_modality_config_file_that_is_not_a_dict_is_named_once(tmp_path, capsys):
    """`--modality-config-path configs.json` holding a list was told "configs.json: configs.json: modality configs
    must be a non-empty dict ..."."""
    from eval.dataset_factory import make_dataset

    config = tmp_path / "configs.json"
    config.write_text("[1]")
    assert main(["serve", "--dataset-path", str(make_dataset(tmp_path / "dataset", cameras=())),
                 "--modality-config-path", str(config)]) == 2
    assert (f"gr00t-server serve: error: {config}: modality configs must be a non-empty dict {{modality: "
            "ModalityConfig}, got [1]") in capsys.readouterr().err


@pytest.mark.parametrize("command", ["export", "verify"])
def test_export_and_verify_name_the_checkpoints_tags_for_an_unsupported_one(tiny_checkpoint, tmp_path, capsys, command):
    """export and verify kept only the first line of the unsupported-tag error, losing the tags to serve."""
    pytest.importorskip("torch")
    argv = [command, "--model-path", str(tiny_checkpoint), "--embodiment-tag", "unitree_g1"]
    argv += ["--output", str(tmp_path / "onnx")] if command == "export" else ["--torch-compile"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is not supported by this checkpoint." in err and "(--embodiment-tag libero_sim)" in err, err
    assert len(err.strip().splitlines()) == 1, err
