"""Serving what a fine-tuning run leaves behind: outputs/processor/ beside outputs/checkpoint-N/, trainer state without
weights, an embodiment_id.json in the place the reference does not read, and a mistyped relative checkpoint path."""

import json
import shutil

import pytest

from gr00t_server.model import CheckpointError, resolve_checkpoint_dir
from gr00t_server.processing.config import load_embodiment_ids

PROCESSOR_FILES = ("processor_config.json", "statistics.json", "embodiment_id.json")


def _training_output(tiny_checkpoint, outputs, steps=(500, 1000, 1500)):
    """A run's output folder: the processor files in outputs/processor/, the weights in outputs/checkpoint-N/."""
    (outputs / "processor").mkdir(parents=True)
    for name in PROCESSOR_FILES:
        shutil.copy(tiny_checkpoint / name, outputs / "processor" / name)
    for step in steps:
        shutil.copytree(tiny_checkpoint, outputs / f"checkpoint-{step}",
                        ignore=shutil.ignore_patterns(*PROCESSOR_FILES))
    return outputs


# --- embodiment_id.json in the place that is not read ----------------------------------------------------------------


def _processor_files_in_root_ids_in_processor(copy_of, ids):
    checkpoint = copy_of()
    (checkpoint / "embodiment_id.json").unlink()
    (checkpoint / "processor").mkdir()
    (checkpoint / "processor" / "embodiment_id.json").write_text(json.dumps(ids))
    return checkpoint


def test_an_unread_embodiment_id_json_giving_the_served_tag_another_index_is_refused_naming_both(copy_of):
    """The run's {"new_embodiment": 5} in processor/ was ignored without a word: the built-in projector 10 (another
    embodiment's encoders and decoder) served plausible actions."""
    checkpoint = _processor_files_in_root_ids_in_processor(copy_of, {"new_embodiment": 5})
    with pytest.raises(ValueError) as raised:
        load_embodiment_ids(checkpoint, ["new_embodiment", "libero_sim"], served_tag="new_embodiment")
    message = str(raised.value)
    assert f"{checkpoint / 'processor' / 'embodiment_id.json'} gives the served embodiment 'new_embodiment' " \
           "projector index 5" in message, message
    assert str(checkpoint / "embodiment_id.json") in message and "index 10" in message, message
    assert "keep one embodiment_id.json" in message, message


def test_an_unread_root_embodiment_id_json_giving_the_served_tag_another_index_is_refused(copy_of):
    checkpoint = copy_of()
    (checkpoint / "processor").mkdir()
    for name in PROCESSOR_FILES:
        shutil.move(checkpoint / name, checkpoint / "processor" / name)
    (checkpoint / "embodiment_id.json").write_text(json.dumps({"libero_sim": 7}))
    with pytest.raises(ValueError, match=r"gives the served embodiment 'libero_sim' projector index 7.* index 2"):
        load_embodiment_ids(checkpoint, ["new_embodiment", "libero_sim"], served_tag="libero_sim")


def test_gr00t_policy_refuses_a_checkpoint_whose_unread_embodiment_id_json_disagrees(copy_of, serve_error):
    checkpoint = _processor_files_in_root_ids_in_processor(copy_of, {"new_embodiment": 5})
    err = serve_error(checkpoint)
    assert "projector index 5" in err and "index 10" in err, err


def test_an_unread_embodiment_id_json_agreeing_on_the_served_tag_or_lacking_it_is_named_in_a_warning(copy_of, caplog):
    checkpoint = _processor_files_in_root_ids_in_processor(copy_of, {"new_embodiment": 10, "libero_sim": 7})
    unread = checkpoint / "processor" / "embodiment_id.json"
    with caplog.at_level("WARNING"):
        ids = load_embodiment_ids(checkpoint, ["new_embodiment", "libero_sim"], served_tag="new_embodiment")
    assert ids["new_embodiment"] == 10 and ids["libero_sim"] == 2
    assert f"{unread} is not read" in caplog.text
    caplog.clear()
    unread.write_text(json.dumps({"libero_sim": 7}))
    with caplog.at_level("WARNING"):
        assert load_embodiment_ids(checkpoint, ["new_embodiment"], served_tag="new_embodiment")["new_embodiment"] == 10
    assert f"{unread} is not read" in caplog.text


def test_an_unread_copy_of_the_embodiment_id_json_read_says_nothing(copy_of, caplog):
    checkpoint = copy_of()
    (checkpoint / "processor").mkdir()
    shutil.copy(checkpoint / "embodiment_id.json", checkpoint / "processor" / "embodiment_id.json")
    with caplog.at_level("WARNING"):
        load_embodiment_ids(checkpoint, ["new_embodiment"], served_tag="new_embodiment")
    assert "embodiment_id.json" not in caplog.text


# --- checkpoint-N without weights or processor files -----------------------------------------------------------------


def test_trainer_state_without_weights_is_named_as_such_not_as_weights_to_convert(copy_of, serve_error):
    checkpoint = copy_of()
    (checkpoint / "model.safetensors").unlink()
    for name in ("optimizer.pt", "scheduler.pt", "training_args.bin", "rng_state.pth"):
        (checkpoint / name).write_bytes(b"\x80\x04N.")
    (checkpoint / "trainer_state.json").write_text("{}")
    err = serve_error(checkpoint)
    assert "convert" not in err, err
    assert "trainer checkpoint" in err and "weights missing or still being written" in err, err


def test_a_checkpoint_n_of_trainer_state_only_is_named_a_trainer_checkpoint_not_only_missing_its_config(tmp_path):
    """A checkpoint-N holding only the trainer's files (its save cut short, or still running) was told only that it has
    no config.json."""
    checkpoint = tmp_path / "outputs" / "checkpoint-500"
    checkpoint.mkdir(parents=True)
    for name in ("optimizer.pt", "scheduler.pt", "training_args.bin", "rng_state.pth"):
        (checkpoint / name).write_bytes(b"\x80\x04N.")
    with pytest.raises(CheckpointError) as refused:
        resolve_checkpoint_dir(checkpoint)
    err = str(refused.value)
    assert err.startswith(f"{checkpoint} has no config.json"), err
    assert "trainer checkpoint" in err and "weights missing or still being written" in err, err


def test_pytorch_weights_beside_trainer_state_are_the_ones_named_to_convert(copy_of, serve_error):
    checkpoint = copy_of()
    (checkpoint / "model.safetensors").unlink()
    for name in ("optimizer.pt", "training_args.bin", "pytorch_model.bin"):
        (checkpoint / name).write_bytes(b"\x80\x04N.")
    err = serve_error(checkpoint)
    assert "(pytorch_model.bin there: only safetensors weights are read; convert them)" in err, err


def test_a_checkpoint_without_processor_files_names_the_runs_processor_folder_and_what_to_copy(tiny_checkpoint,
                                                                                              tmp_path, serve_error):
    outputs = _training_output(tiny_checkpoint, tmp_path / "outputs")
    err = serve_error(outputs / "checkpoint-1500")
    assert f"{outputs / 'processor'} beside it holds the run's processor files" in err, err
    assert "copy processor_config.json, statistics.json, embodiment_id.json into" in err, err


def test_a_run_output_folder_names_its_checkpoints_by_step_and_suggests_the_latest(tiny_checkpoint, tmp_path):
    outputs = _training_output(tiny_checkpoint, tmp_path / "outputs")
    with pytest.raises(CheckpointError) as raised:
        resolve_checkpoint_dir(outputs)
    message = str(raised.value)
    assert "['checkpoint-500', 'checkpoint-1000', 'checkpoint-1500']" in message, message
    assert f"e.g. {outputs / 'checkpoint-1500'}" in message, message


# --- a mistyped relative checkpoint path -----------------------------------------------------------------------------


def test_a_relative_path_under_a_local_folder_is_refused_as_a_missing_folder_without_asking_the_hub(
        tiny_checkpoint, tmp_path, monkeypatch):
    """outputs/checkpoint-100 (for checkpoint-1000) looks like a hub id: it was sent to huggingface.co and reported
    only as a hub repository that does not exist."""
    _training_output(tiny_checkpoint, tmp_path / "outputs", steps=(1000, 500))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub lookup would say so in its error
    with pytest.raises(CheckpointError) as raised:
        resolve_checkpoint_dir("outputs/checkpoint-100")
    message = str(raised.value)
    assert "no local folder 'outputs/checkpoint-100'" in message, message
    assert "['checkpoint-500', 'checkpoint-1000']" in message, message
    assert "HF_HUB_OFFLINE" not in message and "hub cache" not in message, message


def test_a_hub_id_whose_owner_is_no_local_folder_still_goes_to_the_hub(tmp_path, monkeypatch):
    (tmp_path / "outputs").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="not in the local hub cache, and HF_HUB_OFFLINE is set"):
        resolve_checkpoint_dir("gr00t-tests/not-a-real-repo/libero_10")
