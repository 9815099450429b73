"""Half-copied and half-downloaded checkpoints (a copy cut short, a full disk, an interrupted hub download): refused
at load in one line that says what happened to which file and to download or copy it again."""

import hashlib
import os

import pytest

from gr00t_server.model import load_model, save_model

CHECKPOINT_JSON_FILES = ["config.json", "processor_config.json", "statistics.json", "embodiment_id.json",
                         "tokenizer_config.json", "preprocessor_config.json", "special_tokens_map.json"]


def _sharded(checkpoint):
    """`checkpoint` with its weights rewritten as several shards and an index; the shard names, in order."""
    model, _ = load_model(checkpoint, device="cpu")
    save_model(model, checkpoint, max_shard_size="2MB")
    shards = sorted(path.name for path in checkpoint.glob("model-*.safetensors"))
    assert len(shards) > 1
    return shards


def _hub_cache(checkpoint, root, unfinished=(), dangling=()):
    """`checkpoint` laid out as huggingface_hub caches it: models--owner--name/blobs/<sha256> and snapshots/<revision>/
    links to them. A file in `unfinished` is only half downloaded (blobs/<sha256>.incomplete, not linked yet); one in
    `dangling` is linked to a blob whose download is unfinished."""
    repository = root / "models--owner--name"
    revision = "f" * 40
    snapshot = repository / "snapshots" / revision
    (repository / "blobs").mkdir(parents=True)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(revision)
    snapshot.mkdir(parents=True)
    for path in sorted(checkpoint.iterdir()):
        data = path.read_bytes()
        blob = repository / "blobs" / hashlib.sha256(data).hexdigest()
        if path.name in unfinished or path.name in dangling:
            blob.with_name(blob.name + ".incomplete").write_bytes(data[: len(data) // 3])
        else:
            blob.write_bytes(data)
        if path.name not in unfinished:
            os.symlink(f"../../blobs/{blob.name}", snapshot / path.name)
    return repository, snapshot


# --- JSON files cut short ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CHECKPOINT_JSON_FILES)
def test_an_empty_checkpoint_json_file_is_named_empty_with_the_remedy(copy_of, serve_error, name):
    checkpoint = copy_of()
    (checkpoint / name).write_bytes(b"")
    err = serve_error(checkpoint)
    assert f"{checkpoint / name} is empty (0 bytes)" in err and "download or copy it again" in err, err


@pytest.mark.parametrize("name", CHECKPOINT_JSON_FILES)
def test_a_checkpoint_json_file_cut_short_is_named_so_with_the_remedy(copy_of, serve_error, name):
    checkpoint = copy_of()
    data = (checkpoint / name).read_bytes()
    (checkpoint / name).write_bytes(data[: len(data) // 2])
    err = serve_error(checkpoint)
    assert f"{checkpoint / name} ends mid-document (cut short?)" in err and "download or copy it again" in err, err


def test_a_checkpoint_json_file_cut_inside_a_character_is_named_cut_short(copy_of, serve_error):
    checkpoint = copy_of()
    path = checkpoint / "special_tokens_map.json"
    path.write_bytes('{"pad_token": "\u00e9'.encode("utf-8")[:-1])  # the first byte of two
    err = serve_error(checkpoint)
    assert f"{path} ends mid-document (cut short?)" in err and "download or copy it again" in err, err


def test_a_shard_index_cut_short_is_named_so_with_the_remedy(copy_of, serve_error):
    checkpoint = copy_of()
    _sharded(checkpoint)
    index = checkpoint / "model.safetensors.index.json"
    index.write_text(index.read_text()[:100])
    err = serve_error(checkpoint)
    assert f"{index} ends mid-document (cut short?)" in err and "download or copy it again" in err, err


def test_json_that_is_whole_but_malformed_is_not_called_cut_short(copy_of, serve_error):
    checkpoint = copy_of()
    (checkpoint / "statistics.json").write_text('{"new_embodiment": {} "x": 1}')
    err = serve_error(checkpoint)
    assert f"{checkpoint / 'statistics.json'} is not valid JSON" in err and "cut short" not in err, err


# --- weights half copied or half downloaded ----------------------------------------------------------------------


def test_shards_without_their_index_are_named_as_a_copy_cut_short(copy_of, serve_error):
    checkpoint = copy_of()
    shards = _sharded(checkpoint)
    (checkpoint / "model.safetensors.index.json").unlink()
    err = serve_error(checkpoint)
    assert f"its {len(shards)} shard file(s) ({shards[0]}, " in err, err
    assert "have no model.safetensors.index.json" in err and "download or copy the checkpoint again" in err, err


def test_a_hub_snapshot_whose_weights_are_still_downloading_names_the_incomplete_blob(copy_of, serve_error, tmp_path):
    checkpoint = copy_of()
    repository, snapshot = _hub_cache(checkpoint, tmp_path / "hub", unfinished={"model.safetensors"})
    (incomplete,) = (repository / "blobs").glob("*.incomplete")
    err = serve_error(snapshot)
    assert f"{incomplete} in its hub cache is a download still running, or interrupted" in err, err
    assert "download it again" in err, err


def test_a_hub_snapshot_shard_link_into_an_unfinished_blob_is_named_a_broken_link(copy_of, serve_error, tmp_path):
    checkpoint = copy_of()
    shards = _sharded(checkpoint)
    repository, snapshot = _hub_cache(checkpoint, tmp_path / "hub", dangling={shards[1]})
    target = os.readlink(snapshot / shards[1])
    err = serve_error(snapshot)
    assert f"{snapshot / shards[1]} is a broken link to {target}" in err, err
    assert f"{repository / 'blobs' / os.path.basename(target)}.incomplete is unfinished" in err, err
    assert "download or copy it again" in err, err


# --- a hub cache folder given as the checkpoint ------------------------------------------------------------------


def test_a_hub_cache_repository_folder_names_its_snapshot_and_hub_id(copy_of, serve_error, tmp_path):
    """Users find models--owner--name under ~/.cache/huggingface/hub; the checkpoint is in snapshots/<revision>/."""
    repository, snapshot = _hub_cache(copy_of(), tmp_path / "hub")
    err = serve_error(repository)
    assert f"{repository} has no config.json" in err and f"give {snapshot} or the hub id owner/name" in err, err


@pytest.mark.parametrize("raw, expected", [
    (b'{"a": 1}\nnu', "is not valid JSON: Extra data"),  # a whole document with leftover bytes: not cut short
    (b'{"a": [1, 2' + b"\0" * 64, "ends in NUL bytes after 11 bytes of text (cut short?); download or copy it again"),
    (b"\n", "is empty (1 bytes of white space); expected a JSON document: download or copy it again"),
    ('{"a": 1}'.encode("utf-16-le"), "is UTF-16-LE text; expected UTF-8 JSON"),  # a whole file: not cut short
    ('{"a": "\u00fc'.encode()[:-1] + b"\0" * 8, "ends in NUL bytes after 8 bytes of text (cut short?)"),  # in a char
], ids=["extra-data", "nul-padded", "white-space", "utf-16", "nul-padded-inside-a-character"])
def test_the_json_reader_names_leftovers_nul_padding_and_white_space_for_what_they_are(tmp_path, raw, expected):
    from gr00t_server.checkpoint_json import read_checkpoint_json

    path = tmp_path / "config.json"
    path.write_bytes(raw)
    with pytest.raises(ValueError) as info:
        read_checkpoint_json(path)
    assert str(info.value).startswith(f"{path} {expected}"), str(info.value)
