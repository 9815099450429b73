"""Checkpoint IO: save/load round trips, strict key checking, hub ids and offline behaviour."""

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gr00t_server.model import (
    CheckpointError,
    CheckpointKeyError,
    load_model,
    resolve_checkpoint_dir,
    save_model,
)
from gr00t_server.model import checkpoint as checkpoint_module
from gr00t_server.model.checkpoint import split_hub_id

NORM_KEY = "backbone.model.model.language_model.norm.weight"
GRID = (1, 4, 4)


def make_inputs(config):
    g = torch.Generator().manual_seed(0)
    n_patches = GRID[0] * GRID[1] * GRID[2]
    image = [1002] + [config.image_token_id] * (n_patches // 4) + [1003]
    input_ids = torch.tensor([[11, 12, 13, *image, 21, 22, 23]])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(n_patches, 3 * 2 * 16 * 16, generator=g),
        "image_grid_thw": torch.tensor([GRID]),
        "state": torch.randn(1, 1, config.max_state_dim, generator=g),
        "embodiment_id": torch.tensor([2]),
    }


@pytest.fixture(scope="module")
def noise(config):
    return torch.randn(1, config.action_horizon, config.max_action_dim, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def saved_dir(model, tmp_path_factory):
    return save_model(model, tmp_path_factory.mktemp("ckpt"))


def actions(model, config, noise):
    return model.get_action(make_inputs(config), noise=noise)["action_pred"]


def test_single_file_round_trip_gives_identical_actions(model, config, noise, saved_dir):
    assert (saved_dir / "model.safetensors").is_file()
    loaded, loaded_config = load_model(saved_dir, device="cpu")
    assert loaded_config == config
    assert not loaded.training
    assert torch.equal(actions(loaded, config, noise), actions(model, config, noise))


def test_sharded_round_trip_gives_identical_actions(model, config, noise, tmp_path):
    save_model(model, tmp_path, max_shard_size="2MB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "model.safetensors").exists()
    loaded, _ = load_model(tmp_path, device="cpu")
    assert torch.equal(actions(loaded, config, noise), actions(model, config, noise))


def test_load_in_bfloat16_casts_every_parameter(saved_dir):
    loaded, _ = load_model(saved_dir, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def test_tied_lm_head_is_not_saved_and_is_tied_after_loading(saved_dir):
    assert "backbone.model.lm_head.weight" not in load_file(saved_dir / "model.safetensors")
    loaded, _ = load_model(saved_dir)
    qwen = loaded.backbone.model
    assert qwen.lm_head.weight is qwen.model.language_model.embed_tokens.weight


def rewrite_weights(directory, edit):
    state = load_file(directory / "model.safetensors")
    edit(state)
    save_file(state, str(directory / "model.safetensors"))


def test_strict_load_names_a_missing_and_an_unexpected_key(model, tmp_path):
    save_model(model, tmp_path)
    missing_key = "action_head.position_embedding.weight"

    def edit(state):
        del state[missing_key]
        state["action_head.extra_projection.weight"] = torch.zeros(2, 2)

    rewrite_weights(tmp_path, edit)
    with pytest.raises(CheckpointKeyError) as info:
        load_model(tmp_path)
    assert missing_key in str(info.value)
    assert "action_head.extra_projection.weight" in str(info.value)


def test_strict_load_names_a_shape_mismatch(model, tmp_path):
    save_model(model, tmp_path)
    rewrite_weights(tmp_path, lambda state: state.__setitem__("action_head.vlln.weight", torch.ones(3)))
    with pytest.raises(CheckpointKeyError, match=r"action_head\.vlln\.weight: checkpoint \(3,\)"):
        load_model(tmp_path)


def test_known_ignorable_keys_may_be_absent_or_extra(model, config, noise, tmp_path):
    save_model(model, tmp_path)

    def edit(state):
        del state[NORM_KEY]
        state["action_head.mask_token"] = torch.zeros(1, 1, config.input_embedding_dim)

    rewrite_weights(tmp_path, edit)
    loaded, _ = load_model(tmp_path)
    assert torch.equal(actions(loaded, config, noise), actions(model, config, noise))  # norm is unused


def test_a_directory_without_weights_is_a_clear_error(model, tmp_path):
    model.config.save(tmp_path)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path)


def test_a_hub_id_with_a_sub_folder_splits_into_repo_and_sub_folder():
    assert split_hub_id("nvidia/GR00T-N1.7-LIBERO/libero_10") == ("nvidia/GR00T-N1.7-LIBERO", "libero_10")
    assert split_hub_id("nvidia/GR00T-N1.7-3B") == ("nvidia/GR00T-N1.7-3B", None)


def test_a_hub_id_downloads_only_the_checkpoint_files_of_its_sub_folder(model, tmp_path, monkeypatch):
    save_model(model, tmp_path / "libero_10")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    directory = resolve_checkpoint_dir("nvidia/GR00T-N1.7-LIBERO/libero_10")
    assert directory == tmp_path / "libero_10"
    repo_id, kwargs = calls[0]
    assert repo_id == "nvidia/GR00T-N1.7-LIBERO"
    assert "libero_10/config.json" in kwargs["allow_patterns"]
    assert "libero_10/model-*.safetensors" in kwargs["allow_patterns"]
    assert all(pattern.startswith("libero_10/") for pattern in kwargs["allow_patterns"])


def test_local_files_only_reaches_the_weights_download_and_processor_folders_are_fetched(model, tmp_path, monkeypatch):
    """Gr00tPolicy(local_files_only=True) downloaded the weights anyway (only the tokenizer lookup saw the flag),
    and a hub checkpoint with its processor files in processor/ had only its weights fetched."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append(kwargs)
        raise LocalEntryNotFoundError("not in the cache")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(CheckpointError, match="not in the local hub cache, and local_files_only is set"):
        resolve_checkpoint_dir("nvidia/GR00T-N1.7-LIBERO", local_files_only=True)
    assert calls[0]["local_files_only"] is True
    assert "processor/statistics.json" in calls[0]["allow_patterns"]
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    with pytest.raises(CheckpointError, match="local_files_only is set"):
        Gr00tPolicy("nvidia/GR00T-N1.7-LIBERO", "libero_sim", device="cpu", local_files_only=True)
    assert calls[1]["local_files_only"] is True


def test_an_offline_hub_id_fails_fast_with_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        load_model("gr00t-tests/not-a-real-repo/libero_10")
    assert time.monotonic() - start < 10


def test_a_path_that_is_neither_a_directory_nor_a_hub_id_is_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="neither an existing directory nor a hub id"):
        resolve_checkpoint_dir(str(tmp_path / "missing" / "x" / "y") + "!")


def test_shard_sizes_parse_with_units():
    assert checkpoint_module.parse_size("2MB") == 2_000_000
    assert checkpoint_module.parse_size("1GiB") == 2**30
    assert checkpoint_module.parse_size(123) == 123


def test_make_test_checkpoint_never_writes_over_a_folder_it_did_not_make(tmp_path):
    from gr00t_server.test_checkpoint import TEST_CHECKPOINT_MARKER, make_test_checkpoint

    real = tmp_path / "real_checkpoint"  # e.g. a user's downloaded checkpoint, pointed at by mistake
    real.mkdir()
    (real / "model.safetensors").write_bytes(b"trained weights")
    (real / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="is not empty .*holds no test checkpoint written by make-test-checkpoint"):
        make_test_checkpoint(real)
    assert (real / "model.safetensors").read_bytes() == b"trained weights" and sorted(p.name for p in real.iterdir()) == [
        "config.json", "model.safetensors"]

    ours = make_test_checkpoint(tmp_path / "ours", seed=1)
    written = json.loads((ours / TEST_CHECKPOINT_MARKER).read_text())
    assert written["complete"] and "model.safetensors" in written["files"] and "config.json" in written["files"]
    (ours / "notes.txt").write_text("mine")
    make_test_checkpoint(ours, size="tiny", seed=2, embodiment_tags=["new_embodiment"])  # again: replaced, notes kept
    again = json.loads((ours / TEST_CHECKPOINT_MARKER).read_text())
    assert again["seed"] == 2 and again["tags"] == ["new_embodiment"] and "notes.txt" not in again["files"]
    assert (ours / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in ours.iterdir()) == sorted([*again["files"], TEST_CHECKPOINT_MARKER, "notes.txt"])

    # A run stopped half-way (Ctrl-C: the marker touched after its last file) left its marker unfinished: the next
    # run removes its files, not the notes.
    (ours / "model.safetensors").write_bytes(b"half written")
    (ours / TEST_CHECKPOINT_MARKER).write_text(json.dumps({"complete": False, "kept": ["notes.txt"]}))
    make_test_checkpoint(ours, seed=3)
    assert (ours / "notes.txt").read_text() == "mine" and json.loads((ours / TEST_CHECKPOINT_MARKER).read_text())["seed"] == 3

    make_test_checkpoint(real, overwrite=True)  # asked for: the folder is emptied first
    assert not (real / "model.safetensors").read_bytes() == b"trained weights"
    assert json.loads((real / TEST_CHECKPOINT_MARKER).read_text())["complete"]


@pytest.mark.parametrize("blank", ["", "  "], ids=["empty", "spaces"])
def test_make_test_checkpoint_refuses_a_blank_out_dir_and_leaves_the_current_folder_alone(tmp_path, monkeypatch, blank):
    """make_test_checkpoint(os.environ.get("CKPT", ""), overwrite=True) emptied the current folder: Path("") is '.'."""
    from gr00t_server.test_checkpoint import make_test_checkpoint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("precious\n")
    with pytest.raises(ValueError, match=r"^make_test_checkpoint: out_dir is empty .*an unset variable\? Expected the "
                                         r"folder to write the checkpoint into \(use '\.' for the current one\)"):
        make_test_checkpoint(blank, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_make_test_checkpoint_refuses_to_empty_the_current_folder_unless_given_the_str_dot(tmp_path, monkeypatch):
    """make_test_checkpoint(Path(os.environ.get("CKPT", "")), overwrite=True) emptied the current folder: a Path('')
    is Path('.'), past the blank check."""
    from gr00t_server.test_checkpoint import make_test_checkpoint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("precious\n")
    for spelt in (Path(""), str(tmp_path)):
        with pytest.raises(ValueError, match=r"^make_test_checkpoint: out_dir .* is the current folder and "
                                             r"overwrite=True would empty it.*a Path\(''\) is '\.'.*pass the str '\.'"):
            make_test_checkpoint(spelt, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_make_test_checkpoint_cli_takes_the_current_folder_typed_another_way_as_dot(tmp_path, monkeypatch):
    """`make-test-checkpoint ./ --overwrite` (or "$PWD") was refused in the Python API's words (a Path('') ...): on
    the command line a blank OUTPUT is refused first, so a typed spelling of the current folder means it."""
    from gr00t_server.cli import main

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "notes.txt").write_text("old\n")
    assert main(["make-test-checkpoint", "./", "--overwrite"]) == 0
    assert (work / "config.json").is_file() and not (work / "notes.txt").exists()
    assert main(["make-test-checkpoint", str(work), "--overwrite"]) == 0
    link = tmp_path / "link"
    link.symlink_to(work)
    monkeypatch.chdir(link)  # "$PWD" through a symlink: the link's path, the real one's folder
    assert main(["make-test-checkpoint", str(link), "--overwrite"]) == 0


def test_make_test_checkpoint_refuses_a_blank_dataset_path_naming_it(tmp_path, monkeypatch):
    from gr00t_server.test_checkpoint import make_test_checkpoint

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^make_test_checkpoint: dataset_path is empty .*Expected a recorded LeRobot "
                                         r"dataset directory"):
        make_test_checkpoint(tmp_path / "ckpt", dataset_path=" ")
    assert not (tmp_path / "ckpt").exists()


def test_a_test_checkpoint_loads_beside_its_marker(tmp_path):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation, make_test_checkpoint

    checkpoint = make_test_checkpoint(tmp_path / "ck", embodiment_tags=["new_embodiment"])
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu", dtype="fp32")
    action, _ = policy.get_action(example_observation(checkpoint, "new_embodiment"))
    assert action and all(np.isfinite(v).all() for v in action.values())


def _fake_dataset(folder):
    """A folder holding meta/info.json (what marks a LeRobot dataset) and one episode file."""
    (folder / "meta").mkdir(parents=True)
    (folder / "meta" / "info.json").write_text("{}")
    (folder / "episode_000000.parquet").write_bytes(b"recorded")
    return folder


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("where", [".", "..", "meta"], ids=["is", "contains", "inside"])
def test_make_test_checkpoint_never_deletes_the_dataset_it_reads(tmp_path, overwrite, where):
    from gr00t_server.test_checkpoint import make_test_checkpoint

    dataset = _fake_dataset(tmp_path / "data" / "mydata")
    out = (dataset / where) if where != ".." else dataset.parent
    with pytest.raises(FileExistsError, match=r"--dataset-path .*mydata.*name a new directory") as refused:
        make_test_checkpoint(out, dataset_path=dataset, overwrite=overwrite)
    assert "pass --overwrite" not in str(refused.value)
    assert (dataset / "episode_000000.parquet").read_bytes() == b"recorded"
    assert (dataset / "meta" / "info.json").is_file()


@pytest.mark.parametrize("inside", ["recorded", ".cache/recorded", ".gr00t_data/recorded", ".gr00t/datasets/recorded"],
                         ids=["sub-folder", "hidden sub-folder", "user's .gr00t_data", "user's .gr00t"])
@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_make_test_checkpoint_never_empties_a_folder_holding_a_dataset(tmp_path, overwrite, inside):
    """A dataset in a hidden sub-folder (.cache/) was not looked for, and --overwrite deleted it (R51); nor in a user's
    folder whose name begins .gr00t, taken for one of the tools' own (R52)."""
    from gr00t_server.test_checkpoint import make_test_checkpoint

    folder = tmp_path / "project"
    _fake_dataset(folder / inside)
    with pytest.raises(FileExistsError, match=rf"holds, in {re.escape(inside)}/, a LeRobot dataset \(meta/info.json\); "
                                              r"--overwrite never deletes one: name a new directory") as refused:
        make_test_checkpoint(folder, overwrite=overwrite)
    assert "pass --overwrite" not in str(refused.value)
    assert (folder / inside / "episode_000000.parquet").read_bytes() == b"recorded"


@pytest.mark.skipif(os.name == "nt", reason="symbolic links")
def test_make_test_checkpoint_never_empties_a_dataset_whose_info_json_is_not_fetched(tmp_path):
    """meta/info.json a link to a file git-annex has not fetched yet (dangling): still a dataset."""
    from gr00t_server.test_checkpoint import make_test_checkpoint

    folder = tmp_path / "project"
    dataset = _fake_dataset(folder / "recorded")
    (dataset / "meta" / "info.json").unlink()
    (dataset / "meta" / "info.json").symlink_to(tmp_path / "annex" / "objects" / "info.json")
    with pytest.raises(FileExistsError, match=r"holds, in recorded/, a LeRobot dataset \(meta/info.json\)"):
        make_test_checkpoint(folder, overwrite=True)
    assert (dataset / "episode_000000.parquet").read_bytes() == b"recorded"


def _interrupted_run_marker(folder):
    """The marker a run killed half-way (kill -9) leaves: written at its start, never completed."""
    folder.mkdir()
    (folder / "gr00t_test_checkpoint.json").write_text(json.dumps({"complete": False, "kept": []}))
    marker_time = time.time() - 60
    os.utime(folder / "gr00t_test_checkpoint.json", (marker_time, marker_time))


def test_after_an_interrupted_run_files_put_there_later_are_refused_not_deleted(tmp_path):
    from gr00t_server.test_checkpoint import make_test_checkpoint

    folder = tmp_path / "ck"
    _interrupted_run_marker(folder)
    (folder / "model.safetensors").write_bytes(b"trained weights")  # a real checkpoint copied in since
    (folder / "NOTES.md").write_text("mine")
    with pytest.raises(FileExistsError, match=r"is not empty \((NOTES.md, model.safetensors|model.safetensors, "
                                              r"NOTES.md)\) and holds the files of an interrupted make-test-checkpoint "
                                              r"run and these, .*pass --overwrite"):  # not "holds no test checkpoint"
        make_test_checkpoint(folder)
    assert (folder / "model.safetensors").read_bytes() == b"trained weights"
    assert (folder / "NOTES.md").read_text() == "mine"


def test_after_an_interrupted_run_only_its_own_files_are_replaced(tmp_path):
    from gr00t_server.test_checkpoint import TEST_CHECKPOINT_MARKER, make_test_checkpoint

    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"half written")  # written before the run's marker was last touched
    (folder / TEST_CHECKPOINT_MARKER).write_text(json.dumps({"complete": False, "kept": []}))
    make_test_checkpoint(folder, seed=4)
    assert json.loads((folder / TEST_CHECKPOINT_MARKER).read_text())["seed"] == 4
    assert (folder / "model.safetensors").read_bytes() != b"half written"


# `python -c KILLED_WRITING_WEIGHTS FOLDER`: make-test-checkpoint into FOLDER, killed (SIGKILL, as an OOM kill) as it
# starts the weights, its config.json written
KILLED_WRITING_WEIGHTS = """
import os, signal, sys
from gr00t_server.model import checkpoint
from gr00t_server.test_checkpoint import make_test_checkpoint
checkpoint._save_readable = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
make_test_checkpoint(sys.argv[1])
"""


def test_a_run_killed_after_writing_its_config_is_rerun_into_the_same_folder(tmp_path):
    """The marker was touched only after the config and the weights together: a run killed while it wrote the weights
    left its own complete config.json newer than it, and the rerun refused it as a user's (R52)."""
    import subprocess
    import sys

    from gr00t_server.test_checkpoint import TEST_CHECKPOINT_MARKER, make_test_checkpoint

    folder = tmp_path / "ck"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITING_WEIGHTS, str(folder)], capture_output=True, text=True)
    assert killed.returncode == -9 and (folder / "config.json").is_file(), killed.stderr
    assert not json.loads((folder / TEST_CHECKPOINT_MARKER).read_text())["complete"]
    make_test_checkpoint(folder, seed=3)  # no overwrite: every file there is the killed run's
    assert json.loads((folder / TEST_CHECKPOINT_MARKER).read_text())["seed"] == 3


def test_after_a_kill_the_file_the_run_was_writing_is_the_one_named_and_kept(tmp_path):
    """The marker names the file about to be written: the only one of the run's files a rerun cannot tell from one put
    there since, so it alone is refused, by name."""
    from gr00t_server.test_checkpoint import TEST_CHECKPOINT_MARKER, make_test_checkpoint

    folder = tmp_path / "ck"
    _interrupted_run_marker(folder)
    (folder / "config.json").write_text("{}")  # written before the marker's last rewrite: the run's own
    os.utime(folder / "config.json", (time.time() - 120, time.time() - 120))
    marker = json.loads((folder / TEST_CHECKPOINT_MARKER).read_text())
    (folder / TEST_CHECKPOINT_MARKER).write_text(json.dumps({**marker, "writing": ["model.safetensors"]}))
    os.utime(folder / TEST_CHECKPOINT_MARKER, (time.time() - 60, time.time() - 60))
    (folder / "model.safetensors").write_bytes(b"half written, or a real one copied in since")
    with pytest.raises(FileExistsError, match=r"holds the files of an interrupted make-test-checkpoint run and "
                                              r"model.safetensors, the file it was writing when it was killed"):
        make_test_checkpoint(folder)
    assert (folder / "model.safetensors").read_bytes() == b"half written, or a real one copied in since"


# `python -c KILLED_WRITING_MARKER FOLDER N`: make-test-checkpoint into FOLDER, killed (SIGKILL) as it puts its marker's
# N-th content in place (the rename of the content written beside it)
KILLED_WRITING_MARKER = """
import os, signal, sys
from gr00t_server import test_checkpoint
renames, rename = [0], os.replace
def killed_at_the_nth(source, target):
    if os.path.basename(target) == test_checkpoint.TEST_CHECKPOINT_MARKER:
        renames[0] += 1
        if renames[0] == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
    rename(source, target)
os.replace = killed_at_the_nth
test_checkpoint.make_test_checkpoint(sys.argv[1])
"""


def test_a_run_killed_before_its_first_marker_was_renamed_keeps_a_users_file_and_reruns(tmp_path):
    """Killed after writing its first marker beside the folder's earlier content (a user's notes kept beside an
    earlier test checkpoint) and before renaming it into place: the rerun refused the folder as holding no test
    checkpoint, and the --overwrite it advised deleted the notes (R55). The content written beside the marker says
    what was there: the notes are kept and the rerun writes."""
    from gr00t_server.test_checkpoint import MARKER_TEMPORARY, TEST_CHECKPOINT_MARKER, make_test_checkpoint

    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / MARKER_TEMPORARY).write_text(json.dumps({"complete": False, "kept": ["notes.txt"]}))
    make_test_checkpoint(folder, seed=6)
    assert (folder / "notes.txt").read_text() == "mine"
    assert json.loads((folder / TEST_CHECKPOINT_MARKER).read_text())["seed"] == 6
    assert not (folder / MARKER_TEMPORARY).exists()


@pytest.mark.parametrize("kill_at", [1, 3, 7])
def test_a_run_killed_while_it_rewrites_its_marker_is_rerun_into_the_same_folder(tmp_path, kill_at):
    """The marker was rewritten in place before each file: a kill -9 mid-write left it empty, and the rerun refused
    the run's own folder as holding no test checkpoint (R54). It is written beside and renamed: killed before a rename,
    the content beside it is the newer (R56: the rerun then refused the file it said was finished)."""
    import subprocess
    import sys

    from gr00t_server.test_checkpoint import TEST_CHECKPOINT_MARKER, make_test_checkpoint

    folder = tmp_path / "ck"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITING_MARKER, str(folder), str(kill_at)],
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    make_test_checkpoint(folder, seed=5)  # no overwrite: every file there is the killed run's
    assert json.loads((folder / TEST_CHECKPOINT_MARKER).read_text())["seed"] == 5
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("writing", [[], ["model.safetensors"]], ids=["before its first file", "at its weights"])
def test_a_users_checkpoint_moved_into_a_killed_runs_folder_is_never_taken_for_its_files(tmp_path, writing):
    """A run killed before its first file (or at its weights), then a user's checkpoint moved in with its file times
    kept (mv, cp -a): files older than the marker were taken for the killed run's, deleted, and replaced with random
    weights (R57). A killed run wrote only the steps before the one its marker names."""
    from gr00t_server.test_checkpoint import TEST_CHECKPOINT_MARKER, make_test_checkpoint

    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / TEST_CHECKPOINT_MARKER).write_text(json.dumps({"complete": False, "kept": [], "writing": writing}))
    os.utime(folder / TEST_CHECKPOINT_MARKER, (time.time() - 60, time.time() - 60))
    users = ["processor_config.json", "statistics.json"] + (["config.json", "model.safetensors"] if not writing else [])
    for name in users:
        (folder / name).write_text("the user's")
        os.utime(folder / name, (time.time() - 3600, time.time() - 3600))  # older than the marker: times kept
    with pytest.raises(FileExistsError, match=r"holds the files of an interrupted make-test-checkpoint run and"):
        make_test_checkpoint(folder)
    assert all((folder / name).read_text() == "the user's" for name in users)


@pytest.mark.parametrize("temporary", ["", '{"complete": fal'], ids=["emptied", "cut short"])
def test_a_run_killed_writing_its_first_marker_beside_a_users_file_is_rerun_keeping_it(tmp_path, temporary):
    """Killed while it wrote its first marker's temporary (opened, not yet whole): the rerun refused the folder as
    holding no test checkpoint, and the --overwrite it advised deleted the user's notes (R56). A run that wrote
    nothing but that temporary left the folder as it found it: the rerun writes, keeping the notes."""
    from gr00t_server.test_checkpoint import MARKER_TEMPORARY, TEST_CHECKPOINT_MARKER, make_test_checkpoint

    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / MARKER_TEMPORARY).write_text(temporary)
    make_test_checkpoint(folder, seed=8)
    assert (folder / "notes.txt").read_text() == "mine"
    assert json.loads((folder / TEST_CHECKPOINT_MARKER).read_text())["seed"] == 8


def test_make_test_checkpoint_overwrite_never_deletes_a_gr00t_eval_run_still_running_below(tmp_path):
    """gr00t-eval's own --overwrite refused such a folder; make-test-checkpoint's deleted the live run (R52)."""
    import subprocess
    import sys

    pytest.importorskip("gr00t_eval")
    from gr00t_server.test_checkpoint import make_test_checkpoint

    folder = tmp_path / "project"
    (folder / "runs" / "split").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / "runs" / "split" / "run_shard1of2.json").write_text(json.dumps({"claim": {
            "pid": holder.pid, "hostname": __import__("socket").gethostname(), "started": "now",
            "started_unix": time.time(), "finished": False}}))
        with pytest.raises(FileExistsError, match=rf"{re.escape(str(folder))} holds the output of another run, which "
                                                  r"--overwrite would delete: the folder .*split is in use: the run "
                                                  rf"that claimed it is still running \(pid {holder.pid}"):
            make_test_checkpoint(folder, overwrite=True)
    finally:
        holder.kill()
        holder.wait()
    assert (folder / "runs" / "split" / "run_shard1of2.json").is_file() and (folder / "notes.txt").is_file()


def test_make_test_checkpoint_lists_every_file_it_may_remove_after_an_interruption(tmp_path):
    from gr00t_server.test_checkpoint import TEST_CHECKPOINT_FILES, TEST_CHECKPOINT_MARKER, make_test_checkpoint

    written = json.loads((make_test_checkpoint(tmp_path / "ck") / TEST_CHECKPOINT_MARKER).read_text())["files"]
    assert set(written) <= set(TEST_CHECKPOINT_FILES)


def test_a_second_make_test_checkpoint_refuses_a_folder_a_running_one_writes(tmp_path):
    import fcntl

    from gr00t_server.test_checkpoint import make_test_checkpoint

    folder = tmp_path / "ck"
    _interrupted_run_marker(folder)  # as a running one's marker reads until it ends
    (folder / "config.json").write_text("{}")
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # what the running one holds
        with pytest.raises(FileExistsError, match=r"another make-test-checkpoint is writing into .*ck; wait for it "
                                                  r"to finish, or name another directory"):
            make_test_checkpoint(folder)
    finally:
        os.close(descriptor)
    assert (folder / "config.json").read_text() == "{}"
