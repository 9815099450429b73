"""Loading a checkpoint: a typo, a NaN weight, a stale shard index, a half-copied tokenizer or a config.json size
that does not fit is refused at load naming the file and the field; a checkpoint loads by hub id as from its folder,
and a built-in tag it spells in another case is served by any spelling. Real tiny checkpoints, damaged on disk."""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil

import pytest
from safetensors.torch import load_file, save_file

from gr00t_server.policies.gr00t_policy import Gr00tPolicy


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# --- processor_config.json keys ------------------------------------------------------------------------------


def test_a_near_miss_of_a_processor_config_key_is_refused_naming_it_and_the_key_it_meant(copy_of, serve_error):
    # It went silently into `extra`: the checkpoint was served with letter_box_transform false.
    checkpoint = copy_of()
    _edit_json(checkpoint / "processor_config.json",
               lambda data: data["processor_kwargs"].update(letter_box_transfrom=True))
    err = serve_error(checkpoint)
    assert f"{checkpoint / 'processor_config.json'}: processor_kwargs has unknown key 'letter_box_transfrom' " \
           "(did you mean 'letter_box_transform'?)" in err, err


def test_training_only_processor_keys_load_and_another_unknown_key_is_warned_about_once(copy_of, caplog):
    from gr00t_server.processing import load_processor_config

    checkpoint = copy_of()
    _edit_json(checkpoint / "processor_config.json", lambda data: data["processor_kwargs"].update(
        random_rotation_angle=5, color_jitter_params={"brightness": 0.3}, state_dropout_prob=0.2,
        use_albumentations_transforms=True, extra_augmentation_config=None, hdfix_note_for_humans="v2"))
    with caplog.at_level(logging.WARNING):
        config = load_processor_config(checkpoint)
        load_processor_config(checkpoint)
    assert config.extra["random_rotation_angle"] == 5
    named = [record.getMessage() for record in caplog.records if "hdfix_note_for_humans" in record.getMessage()]
    assert len(named) == 1, named
    assert not any("random_rotation_angle" in record.getMessage() for record in caplog.records)


def test_an_unknown_key_more_than_two_edits_from_a_known_one_is_warned_about_not_refused(copy_of, caplog):
    # action_horizon (a key of other configs) was refused as a near miss of max_action_horizon.
    from gr00t_server.processing import load_processor_config

    checkpoint = copy_of()
    _edit_json(checkpoint / "processor_config.json",
               lambda data: data["processor_kwargs"].update(action_horizon=16, transformers_loading_kwargs={}))
    with caplog.at_level(logging.WARNING):
        config = load_processor_config(checkpoint)
    assert config.extra["action_horizon"] == 16
    assert any("action_horizon" in record.getMessage() for record in caplog.records)
    assert not any("transformers_loading_kwargs" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("typo, meant", [("max_action_horizno", "max_action_horizon"),
                                         ("max_acton_horizn", "max_action_horizon")])
def test_a_key_one_swap_or_two_edits_from_a_known_one_is_refused_as_its_typo(copy_of, serve_error, typo, meant):
    checkpoint = copy_of()
    _edit_json(checkpoint / "processor_config.json", lambda data: data["processor_kwargs"].update({typo: 16}))
    err = serve_error(checkpoint)
    assert f"processor_kwargs has unknown key {typo!r} (did you mean {meant!r}?)" in err, err


def _rename_in_modality(modality, old, new, index=None):
    def change(data):
        config = data["processor_kwargs"]["modality_configs"]["new_embodiment"][modality]
        config = config if index is None else config["action_configs"][index]
        config[new] = config.pop(old)
    return change


@pytest.mark.parametrize("modality, field, typo, where", [
    ("action", "action_configs", "action_config", "['action']"),
    ("state", "mean_std_embedding_keys", "mean_std_embedding_key", "['state']"),
    ("action", "state_key", "stat_key", "['action'].action_configs[0]"),
], ids=["action-configs", "mean-std-keys", "action-config-state-key"])
def test_a_near_miss_of_a_modality_config_field_is_refused_naming_it_and_the_field_it_meant(copy_of, serve_error,
                                                                                         modality, field, typo, where):
    # It was dropped with a warning: relative actions were decoded as absolute, z-scored keys min/max-scaled.
    checkpoint = copy_of()
    _edit_json(checkpoint / "processor_config.json", _rename_in_modality(modality, field, typo, index=(
        0 if field == "state_key" else None)))
    err = serve_error(checkpoint)
    assert f"{checkpoint / 'processor_config.json'}: modality_configs['new_embodiment']{where} has unknown field " \
           f"{typo!r} (did you mean {field!r}?)" in err, err


def test_an_unknown_modality_config_field_that_is_no_near_miss_is_warned_about_and_loads(copy_of, caplog):
    from gr00t_server.processing import load_processor_config

    checkpoint = copy_of()
    _edit_json(checkpoint / "processor_config.json", lambda data: data["processor_kwargs"]["modality_configs"][
        "new_embodiment"]["action"].update(comment_for_humans="v2"))
    with caplog.at_level(logging.WARNING):
        load_processor_config(checkpoint)
    assert any("comment_for_humans" in record.getMessage() for record in caplog.records)


# --- hub ids -------------------------------------------------------------------------------------------------


def test_a_hub_id_loads_the_tokenizer_the_checkpoint_carries_as_its_folder_does(tiny_checkpoint, tmp_path, monkeypatch):
    # Only the weights, config and processor files were fetched: the backbone's tokenizer (another prompt) was used.
    import huggingface_hub

    remote = tmp_path / "remote" / "acme" / "my-gr00t"
    shutil.copytree(tiny_checkpoint, remote / "sub")
    (remote / "sub" / "processor").mkdir()
    for name in ("processor_config.json", "statistics.json", "embodiment_id.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json"):
        shutil.move(remote / "sub" / name, remote / "sub" / "processor" / name)  # a training output's layout

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):  # the hub's fnmatch filter, on a local "remote"
        target = tmp_path / "cache" / repo_id.replace("/", "--")
        for path in (tmp_path / "remote" / repo_id).rglob("*"):
            name = path.relative_to(tmp_path / "remote" / repo_id).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target / name)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    local = Gr00tPolicy(remote / "sub", "new_embodiment", device="cpu")
    by_id = Gr00tPolicy("acme/my-gr00t/sub", "new_embodiment", device="cpu")
    assert by_id.identity()["tokenizer_sha256"] == local.identity()["tokenizer_sha256"]
    fetched = tmp_path / "cache" / "acme--my-gr00t" / "sub"
    for name in ("processor/tokenizer.json", "processor/chat_template.jinja", "processor/preprocessor_config.json",
                 "vocab.json", "merges.txt"):
        assert (fetched / name).is_file(), name


def test_a_hub_id_fetches_every_tokenizer_file_the_loader_would_read_from_the_folder():
    from gr00t_server.model.checkpoint import CHECKPOINT_FILES
    from gr00t_server.processing.tokenizer import BACKBONE_FILE_PATTERNS, CHAT_TEMPLATE_DIR

    for name in [*BACKBONE_FILE_PATTERNS, f"{CHAT_TEMPLATE_DIR}/*.jinja"]:
        assert name in CHECKPOINT_FILES and f"processor/{name}" in CHECKPOINT_FILES, name


# --- weights -------------------------------------------------------------------------------------------------


def test_a_nan_weight_is_refused_at_load_naming_the_file_and_tensor(copy_of, serve_error):
    # It loaded; warm-up then failed naming no tensor and advising a `verify` that cannot check weights alone.
    checkpoint = copy_of()
    key = "action_head.model.transformer_blocks.0.ff.net.0.proj.weight"
    weights = load_file(checkpoint / "model.safetensors")
    weights[key][1, 2] = float("nan")
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    err = serve_error(checkpoint)
    assert f"{checkpoint / 'model.safetensors'}: tensor '{key}' holds 1 non-finite value(s) (NaN or inf)" in err, err


def _with_one_large_weight(checkpoint, key, value, wide_dtype):
    """The checkpoint's weights saved as `wide_dtype` (numpy-based converters write float64), one value of `key` set to
    `value`: finite on disk."""
    weights = {name: tensor.to(wide_dtype) for name, tensor in load_file(checkpoint / "model.safetensors").items()}
    weights[key][0, 0] = value
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("wide, value, served, target, shown", [
    ("float64", 1e39, None, "torch.float32", "1e+39"),
    ("float64", 1e39, "bf16", "torch.bfloat16", "1e+39"),
    ("float32", 1e5, "fp16", "torch.float16", "1e+05"),
], ids=["f64-as-fp32", "f64-as-bf16", "fp32-as-fp16"])
def test_a_weight_beyond_the_served_dtypes_range_is_refused_at_load_naming_it(copy_of, wide, value, served,
                                                                              target, shown):
    # It loaded as inf, and every call blamed float16 or a backend: "The checkpoint's weights were finite when loaded".
    import torch

    from gr00t_server.model.checkpoint import CheckpointError, load_model

    checkpoint = copy_of()
    key = "action_head.model.proj_out_1.weight"
    _with_one_large_weight(checkpoint, key, value, getattr(torch, wide))
    with pytest.raises(CheckpointError) as info:
        load_model(checkpoint, device="cpu", dtype=served)
    assert str(info.value).startswith(f"{checkpoint / 'model.safetensors'}: tensor '{key}' holds |values| up to "
                                      f"{shown}, beyond the range of {target}, the dtype it is served in"), info.value


def test_a_float64_checkpoint_within_float32s_range_loads(copy_of):
    import torch

    from gr00t_server.model.checkpoint import load_model

    checkpoint = copy_of()
    _with_one_large_weight(checkpoint, "action_head.model.proj_out_1.weight", 1e30, torch.float64)
    model, _ = load_model(checkpoint, device="cpu")
    assert all(bool(torch.isfinite(tensor).all()) for tensor in model.state_dict().values())


def _with_a_float8_tensor(checkpoint, key, nan=False):
    """An FP8-quantized export: one tensor stored as float8_e4m3fn (safetensors' F8_E4M3), optionally with one NaN."""
    import torch

    weights = load_file(checkpoint / "model.safetensors")
    if nan:
        weights[key].view(-1)[5] = float("nan")
    weights[key] = weights[key].to(torch.float8_e4m3fn)
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})


def test_a_float8_weight_is_checked_and_served(copy_of):
    # The NaN check itself crashed serve: NotImplementedError, "isfinite" not implemented for 'Float8_e4m3fn'.
    import numpy as np
    from serving import running_server

    from gr00t_client import PolicyClient
    from gr00t_server.test_checkpoint import example_observation

    checkpoint = copy_of()
    _with_a_float8_tensor(checkpoint, "action_head.action_decoder.layer2.W")
    with running_server(Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")) as server, \
            PolicyClient(port=server.port, timeout_ms=60000) as client:
        action, _ = client.get_action(example_observation(checkpoint, "new_embodiment"))
    assert action and all(np.isfinite(value).all() for value in action.values())


def test_a_nan_in_a_float8_weight_is_refused_at_load_naming_the_file_and_tensor(copy_of, serve_error):
    checkpoint = copy_of()
    key = "action_head.action_decoder.layer2.W"
    _with_a_float8_tensor(checkpoint, key, nan=True)
    err = serve_error(checkpoint)
    assert f"{checkpoint / 'model.safetensors'}: tensor '{key}' holds 1 non-finite value(s) (NaN or inf)" in err, err


def test_a_shard_the_stale_index_does_not_list_is_named_with_the_index(copy_of, serve_error):
    # "53 missing key(s)", blamed on the config, named neither the folder, the index nor the shard holding them.
    checkpoint = copy_of()
    weights = load_file(checkpoint / "model.safetensors")
    (checkpoint / "model.safetensors").unlink()
    keys = sorted(weights)
    weight_map = {}
    for number, part in enumerate((keys[::2], keys[1::2]), start=1):
        name = f"model-{number:05d}-of-00002.safetensors"
        save_file({key: weights[key] for key in part}, checkpoint / name, metadata={"format": "pt"})
        weight_map.update({key: name for key in part})
    stale = {key: name for key, name in weight_map.items() if name == "model-00001-of-00002.safetensors"}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": stale}))
    err = serve_error(checkpoint)
    assert "missing key(s)" in err, err
    assert f"read from the 1 shard(s) {checkpoint / 'model.safetensors.index.json'} lists" in err, err
    assert f"model-00002-of-00002.safetensors in {checkpoint} is not listed in model.safetensors.index.json" in err, err


# --- tokenizer files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("removed, missing", [
    (("tokenizer.json", "vocab.json"), "vocab.json"),
    (("tokenizer.json", "vocab.json", "merges.txt"), "vocab.json and merges.txt"),
])
def test_a_tokenizer_folder_without_tokenizer_json_or_its_vocabulary_names_the_missing_files(copy_of, serve_error,
                                                                                            removed, missing):
    # transformers said "expected str, bytes or os.PathLike object, not NoneType".
    checkpoint = copy_of()
    for name in removed:
        (checkpoint / name).unlink()
    err = serve_error(checkpoint)
    assert f"tokenizer.json is missing from the tokenizer folder {checkpoint}, and so is {missing}," in err, err
    assert "NoneType" not in err


def test_a_broken_link_as_tokenizer_json_is_named_with_its_target(copy_of, serve_error):
    # An interrupted hub download: the tokenizer was silently rebuilt from vocab.json and merges.txt instead.
    checkpoint = copy_of()
    (checkpoint / "tokenizer.json").unlink()
    (checkpoint / "tokenizer.json").symlink_to(checkpoint / "blobs" / "gone")
    err = serve_error(checkpoint)
    assert f"{checkpoint / 'tokenizer.json'} is a broken link to {checkpoint / 'blobs' / 'gone'}" in err, err


@pytest.mark.parametrize("keep, merges", [(lambda lines: [], 0), (lambda lines: lines[:1], 0),
                                          (lambda lines: lines[: len(lines) // 2], 371)],
                         ids=["empty", "header-only", "half"])
def test_a_merges_txt_cut_short_without_tokenizer_json_is_refused_naming_it(copy_of, serve_error, keep, merges):
    # The tokenizer was rebuilt from the merges left and served other actions without a word.
    checkpoint = copy_of()
    (checkpoint / "tokenizer.json").unlink()
    path = checkpoint / "merges.txt"
    path.write_text("".join(keep(path.read_text().splitlines(True))))
    err = serve_error(checkpoint)
    assert f"error: {path} holds {merges} merges, but vocab.json's 1000 tokens (added tokens aside) need 744" in err, err
    assert "download it (or the backbone's tokenizer.json) again" in err


def test_an_intact_vocab_json_and_merges_txt_without_tokenizer_json_tokenize_as_tokenizer_json_does(copy_of):
    from gr00t_server.processing.tokenizer import load_tokenizer

    checkpoint = copy_of()
    text = "pick up the red block and place it in the top drawer <|image_pad|>"
    expected = load_tokenizer(checkpoint)(text)["input_ids"]
    (checkpoint / "tokenizer.json").unlink()
    assert load_tokenizer(checkpoint)(text)["input_ids"] == expected


def test_a_truncated_vocab_json_without_tokenizer_json_is_named(copy_of, serve_error):
    # It was reported as "the tokenizer files in X (tokenizer.json, tokenizer_config.json) could not be read".
    checkpoint = copy_of()
    (checkpoint / "tokenizer.json").unlink()
    path = checkpoint / "vocab.json"
    path.write_text(path.read_text()[: len(path.read_text()) // 2])
    err = serve_error(checkpoint)
    assert f"error: {path} ends mid-document (cut short?)" in err and "download or copy it again" in err, err
    assert "(tokenizer.json, tokenizer_config.json)" not in err


# --- embodiment tags -----------------------------------------------------------------------------------------


def test_a_built_in_tag_the_checkpoint_spells_in_another_case_is_served_by_its_built_in_spelling(copy_of):
    # serve's default new_embodiment was refused as unsupported by a checkpoint keyed "New_Embodiment".
    checkpoint = copy_of()

    def rename(data):
        data["New_Embodiment"] = data.pop("new_embodiment")

    _edit_json(checkpoint / "processor_config.json", lambda data: rename(data["processor_kwargs"]["modality_configs"]))
    _edit_json(checkpoint / "statistics.json", rename)
    _edit_json(checkpoint / "embodiment_id.json", rename)
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    assert policy.embodiment_tag_value == "New_Embodiment"
    assert policy.embodiment_id == 10


# --- config.json sizes ---------------------------------------------------------------------------------------


def test_dit_heads_left_to_the_code_defaults_are_named_in_config_json(copy_of, serve_error):
    checkpoint = copy_of()
    _edit_json(checkpoint / "config.json", lambda data: [data["diffusion_model_cfg"].pop(key)
                                                          for key in ("num_attention_heads", "attention_head_dim")])
    err = serve_error(checkpoint)
    assert f"{checkpoint / 'config.json'}: config field 'diffusion_model_cfg': num_attention_heads * " \
           "attention_head_dim = 8 * 64 = 512 must equal input_embedding_dim" in err, err
    assert "are absent from diffusion_model_cfg, so the upstream code defaults 8 and 64 apply" in err, err


def test_an_action_horizon_beyond_max_seq_len_is_named_in_config_json(copy_of, serve_error):
    checkpoint = copy_of()
    _edit_json(checkpoint / "config.json", lambda data: data.update(max_seq_len=8))
    err = serve_error(checkpoint)
    assert f"{checkpoint / 'config.json'}: config field 'action_horizon': action_horizon " in err, err
    assert "exceeds max_seq_len 8" in err, err


def test_a_built_in_tag_the_checkpoint_spells_in_two_cases_is_refused_naming_both_spellings(copy_of, serve_error):
    # It said 'NEW_EMBODIMENT' was not supported while listing it among the supported tags.
    checkpoint = copy_of()

    def respell(data, other=lambda value: value):
        value = data.pop("new_embodiment")
        data.update(New_Embodiment=value, NEW_EMBODIMENT=other(value))

    _edit_json(checkpoint / "processor_config.json", lambda data: respell(data["processor_kwargs"]["modality_configs"]))
    _edit_json(checkpoint / "statistics.json", respell)
    _edit_json(checkpoint / "embodiment_id.json", lambda data: respell(data, lambda value: value - 1))
    err = serve_error(checkpoint)
    assert "'NEW_EMBODIMENT' and 'New_Embodiment'; give one exactly: they differ only in case" in err, err
    assert "is not supported" not in err, err
    # given in the reference's positional order (tag, path), it is still taken for the tag it is
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    with pytest.raises(ValueError, match=r"'NEW_EMBODIMENT' and 'New_Embodiment'; give one exactly"):
        Gr00tPolicy("new_embodiment", str(checkpoint), device="cpu")
