"""The backbone's tokenizer and image-processor files: a partial hub-cache entry of the backbone is completed from the
Hub (or, offline, named with the files it lacks), a broken link to any of them is refused, and a config.json whose
action_horizon is not the processor's max_action_horizon is warned about."""

import json
import logging
import shutil

import pytest

from gr00t_server.processing.processor import Gr00tN1d7Processor
from gr00t_server.processing.tokenizer import TokenizerNotFoundError, load_vision_config

BACKBONE = "nvidia/Cosmos-Reason2-2B"
REVISION = "0123456789abcdef0123456789abcdef01234567"
SHIPPED_BACKBONE_FILES = ("added_tokens.json", "chat_template.jinja", "merges.txt", "preprocessor_config.json",
                          "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.json")


@pytest.fixture
def backbone_hub(tiny_checkpoint, tmp_path, monkeypatch):
    """(checkpoint without tokenizer files, its backbone's snapshot folder in a local hub cache holding config.json
    alone, the names the simulated Hub was asked for): huggingface_hub.snapshot_download reads that cache, and an
    online call copies the backbone's files (the tiny checkpoint's, with its own pixel budget) into the snapshot."""
    import huggingface_hub

    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    _set_backbone(checkpoint, BACKBONE)
    remote = tmp_path / "remote"
    remote.mkdir()
    for name in SHIPPED_BACKBONE_FILES:
        shutil.move(checkpoint / name, remote / name)
    settings = json.loads((remote / "preprocessor_config.json").read_text())
    settings["size"] = {"shortest_edge": 4096, "longest_edge": 16384}  # not the built-in defaults
    (remote / "preprocessor_config.json").write_text(json.dumps(settings))
    cache = tmp_path / "hub"
    repo = cache / f"models--{BACKBONE.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    (snapshot / "config.json").write_text("{}")  # what AutoConfig.from_pretrained leaves
    real = huggingface_hub.snapshot_download
    asked = []

    def snapshot_download(repo_id, *args, **kwargs):
        if kwargs.get("local_files_only"):
            return real(repo_id, *args, cache_dir=str(cache), **kwargs)
        asked.append(repo_id)
        for name in SHIPPED_BACKBONE_FILES:
            shutil.copy(remote / name, snapshot / name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return checkpoint, snapshot, remote, asked


def _set_backbone(checkpoint, model_name):
    path = checkpoint / "processor_config.json"
    data = json.loads(path.read_text())
    data["processor_kwargs"]["model_name"] = model_name
    path.write_text(json.dumps(data))


def test_a_backbone_only_partly_in_the_hub_cache_is_completed_from_the_hub(backbone_hub):
    checkpoint, snapshot, _, asked = backbone_hub
    processor = Gr00tN1d7Processor.from_pretrained(checkpoint)
    assert asked == [BACKBONE]
    assert processor.source_files["tokenizer.json"] == snapshot / "tokenizer.json"
    assert processor.vision_config.max_pixels == 16384  # the backbone's preprocessor_config.json, not the defaults


def test_a_cached_backbone_tokenizer_without_preprocessor_config_is_completed_from_the_hub(backbone_hub):
    """AutoTokenizer.from_pretrained caches the tokenizer files alone: the built-in image defaults were used."""
    checkpoint, snapshot, remote, asked = backbone_hub
    for name in SHIPPED_BACKBONE_FILES:
        if name != "preprocessor_config.json":
            shutil.copy(remote / name, snapshot / name)
    processor = Gr00tN1d7Processor.from_pretrained(checkpoint)
    assert asked == [BACKBONE]
    assert processor.vision_config.max_pixels == 16384


def test_a_complete_cached_backbone_is_used_without_asking_the_hub(backbone_hub):
    checkpoint, snapshot, remote, asked = backbone_hub
    for name in SHIPPED_BACKBONE_FILES:
        shutil.copy(remote / name, snapshot / name)
    processor = Gr00tN1d7Processor.from_pretrained(checkpoint)
    assert asked == []
    assert processor.vision_config.max_pixels == 16384


@pytest.mark.parametrize("cached, missing", [
    ((), "tokenizer.json, tokenizer_config.json and preprocessor_config.json"),
    (tuple(n for n in SHIPPED_BACKBONE_FILES if n != "preprocessor_config.json"), "preprocessor_config.json"),
], ids=["config-only", "tokenizer-only"])
def test_a_backbone_only_partly_in_the_hub_cache_offline_names_the_entry_the_missing_files_and_hf_download(
        backbone_hub, cached, missing):
    checkpoint, snapshot, remote, asked = backbone_hub
    for name in cached:
        shutil.copy(remote / name, snapshot / name)
    with pytest.raises(TokenizerNotFoundError) as caught:
        Gr00tN1d7Processor.from_pretrained(checkpoint, local_files_only=True)
    message = str(caught.value)
    assert asked == []
    assert f"{snapshot}" in message and "incomplete" in message, message
    assert f"lacks {missing}" in message, message
    assert f"`hf download {BACKBONE}`" in message, message


def test_a_checkpoint_that_ships_its_tokenizer_without_preprocessor_config_takes_the_qwen3_vl_defaults(copy_of):
    # The checkpoint chose its own tokenizer files; the image defaults are the Qwen3-VL values (model.md §2.3).
    checkpoint = copy_of()
    (checkpoint / "preprocessor_config.json").unlink()
    processor = Gr00tN1d7Processor.from_pretrained(checkpoint, local_files_only=True)
    assert processor.vision_config.max_pixels == 16777216


@pytest.mark.parametrize("name", [
    "preprocessor_config.json", "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt",
    "special_tokens_map.json", "added_tokens.json", "additional_chat_templates/default.jinja",
])
def test_a_broken_link_as_a_backbone_file_in_the_tokenizer_folder_is_refused_naming_its_target(copy_of, name):
    """An interrupted hub-cache download: preprocessor_config.json gave way to the built-in image defaults and
    chat_template.jinja to the tokenizer's own template, with no word."""
    checkpoint = copy_of()
    (checkpoint / name).unlink(missing_ok=True)
    (checkpoint / name).parent.mkdir(exist_ok=True)
    (checkpoint / name).symlink_to(checkpoint / "blobs" / "gone")
    with pytest.raises(FileNotFoundError, match=f"{checkpoint / name} is a broken link to {checkpoint / 'blobs' / 'gone'}"):
        Gr00tN1d7Processor.from_pretrained(checkpoint, local_files_only=True)


def test_load_vision_config_refuses_a_broken_link_to_preprocessor_config(tmp_path):
    (tmp_path / "preprocessor_config.json").symlink_to(tmp_path / "blobs" / "gone")
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json is a broken link to"):
        load_vision_config(tmp_path)


def _action_horizon_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "action_horizon" in r.getMessage()]


def test_a_config_action_horizon_other_than_the_processors_max_action_horizon_is_warned_about(copy_of, caplog):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    checkpoint = copy_of()
    config = json.loads((checkpoint / "config.json").read_text())
    config["action_horizon"] = 80  # another checkpoint's config.json
    (checkpoint / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    (warning,) = _action_horizon_warnings(caplog)
    assert f"{checkpoint / 'config.json'} has action_horizon 80" in warning, warning
    assert f"{checkpoint / 'processor_config.json'} has max_action_horizon 40" in warning, warning


def test_a_config_action_horizon_equal_to_the_processors_loads_without_a_warning(tiny_checkpoint, caplog):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    with caplog.at_level(logging.WARNING):
        Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    assert _action_horizon_warnings(caplog) == []
