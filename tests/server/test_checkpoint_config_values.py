"""Checkpoint configs with nonsense values are refused at load with one line naming the file, the key, the value
found and what was expected, instead of serving another model, silently using a default, or failing later."""

import json

import pytest

from gr00t_server.model import CheckpointError, load_model


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _edit_config(checkpoint, change):
    _edit_json(checkpoint / "config.json", change)


def _rename(data, old, new):
    data[new] = data.pop(old)


def _load_error(checkpoint, tag="new_embodiment"):
    """The one-line message of the error a Gr00tPolicy load of `tag` raises."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    with pytest.raises((ValueError, CheckpointError)) as info:
        Gr00tPolicy(checkpoint, tag, device="cpu")
    assert "\n" not in str(info.value)
    return str(info.value)


# --- model_type / model_name of another model family -------------------------------------------------------


@pytest.mark.parametrize("value", ["llama", "gr00t_n1_5", "", 7])
def test_a_model_type_of_another_model_is_refused_naming_file_key_and_value(copy_of, value, serve_error):
    checkpoint = copy_of()
    _edit_config(checkpoint, lambda data: data.__setitem__("model_type", value))
    err = serve_error(checkpoint)
    assert f"config.json: config field 'model_type' is {json.dumps(value)}; expected \"Gr00tN1d7\"" in err


@pytest.mark.parametrize("value", ["meta-llama/Llama-3-8B", "", 7])
def test_a_model_name_outside_the_backbone_families_is_refused(copy_of, value):
    checkpoint = copy_of()
    _edit_config(checkpoint, lambda data: data.__setitem__("model_name", value))
    message = _load_error(checkpoint)
    assert f"config.json: config field 'model_name' is {json.dumps(value)}; expected a backbone id" in message
    assert "nvidia/Cosmos-Reason2" in message


def test_legacy_model_type_and_a_qwen3_vl_model_name_still_load(copy_of):
    checkpoint = copy_of()
    _edit_config(checkpoint, lambda data: data.update(model_type="GrootN1d7", model_name="Qwen/Qwen3-VL-2B-Instruct"))
    load_model(checkpoint, device="cpu")


def test_upstream_bookkeeping_and_legacy_keys_in_config_json_still_load(copy_of):
    checkpoint = copy_of()
    _edit_config(checkpoint, lambda data: data.update(
        transformers_version="4.57.3", torch_dtype="bfloat16", vlm_model_path="x", vlm_backend="y", dit_latent_dim=3,
        letter_box_transform=False, tune_llm=False, load_bf16=True, use_albumentations_transforms=True,
        random_rotation_angle=None, color_jitter_params=None, extra_augmentation_config=None, tune_vlln=True,
    ))
    load_model(checkpoint, device="cpu")


# --- typos in the DiT / VL self-attention configs and at the top level -------------------------------------------


@pytest.mark.parametrize(
    "section, typo, meant",
    [
        ("diffusion_model_cfg", "num_layer", "num_layers"),
        ("diffusion_model_cfg", "num_attention_head", "num_attention_heads"),
        ("vl_self_attention_cfg", "num_layer", "num_layers"),
    ],
)
def test_a_typo_in_a_transformer_config_is_refused_naming_the_close_match(copy_of, section, typo, meant, serve_error):
    checkpoint = copy_of()
    _edit_config(checkpoint, lambda data: data[section].__setitem__(typo, 8))
    err = serve_error(checkpoint)
    assert f"config.json: config field '{section}' has unknown key '{typo}' (did you mean '{meant}'?)" in err


@pytest.mark.parametrize("edit", [lambda cfg: cfg.__setitem__("num_layers", 0), lambda cfg: cfg.pop("num_layers")],
                         ids=["zero-layers", "no-num-layers"])
def test_a_vl_self_attention_config_without_layers_builds_an_identity_as_upstream(copy_of, edit):
    """num_layers 0 was refused, and an absent num_layers built 12 default layers (then '192 missing keys'), where
    the reference builds no block and loads the checkpoint."""
    import torch
    from safetensors.torch import load_file, save_file

    checkpoint = copy_of()
    _edit_config(checkpoint, lambda data: edit(data["vl_self_attention_cfg"]))
    tensors = {k: v for k, v in load_file(checkpoint / "model.safetensors").items() if ".vl_self_attention." not in k}
    save_file(tensors, checkpoint / "model.safetensors")
    model = load_model(checkpoint, device="cpu")[0]
    assert isinstance(model.action_head.vl_self_attention, torch.nn.Identity)


def test_upstream_dit_keywords_and_diffusers_metadata_are_accepted(copy_of):
    checkpoint = copy_of()
    _edit_config(checkpoint, lambda data: data["diffusion_model_cfg"].update(
        upcast_attention=False, max_num_positional_embeddings=512, num_embeds_ada_norm=1000, cross_attention_dim=64,
        _class_name="DiT",
    ))
    load_model(checkpoint, device="cpu")


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("diffusion_model_cfg", "num_layers", 4.5, "an int >= 1"),
        ("diffusion_model_cfg", "num_layers", "4", "an int >= 1"),
        ("diffusion_model_cfg", "num_attention_heads", -4, "an int >= 1"),
        ("vl_self_attention_cfg", "num_layers", -1, "an int >= 1"),
        ("vl_self_attention_cfg", "num_layers", "4", "an int >= 1"),
        ("diffusion_model_cfg", "dropout", "x", r"a number in [0, 1]"),
        ("diffusion_model_cfg", "norm_eps", -1, "a number in (0, 1)"),
        ("diffusion_model_cfg", "interleave_self_attention", "true", "true or false"),
    ],
)
def test_a_transformer_size_or_rate_of_the_wrong_kind_is_refused(copy_of, section, key, value, expected):
    checkpoint = copy_of()
    _edit_config(checkpoint, lambda data: data[section].__setitem__(key, value))
    message = _load_error(checkpoint)
    assert f"config.json: config field '{section}.{key}' is {json.dumps(value)}; expected {expected}" in message


@pytest.mark.parametrize(
    "section, field, typo, default",
    [("text_config", "rope_theta", "rope_thta", "5000000.0"), ("text_config", "rms_norm_eps", "rms_norm_ep", "1e-06"),
     ("vision_config", "num_position_embeddings", "num_position_embedding", "2304")],
)
def test_a_backbone_typo_that_would_leave_a_qwen3_vl_field_at_its_default_is_refused(copy_of, serve_error, section,
                                                                                    field, typo, default):
    # transformers kept the typo as an unread attribute: the field took the Qwen3-VL default and actions changed.
    checkpoint = copy_of()
    _edit_config(checkpoint, lambda data: _rename(data["backbone_cfg"][section], field, typo))
    err = serve_error(checkpoint)
    assert f"config.json: config field 'backbone_cfg.{section}' has unknown key '{typo}' (did you mean '{field}'?); " \
           f"'{field}' would silently take the Qwen3-VL default {default}" in err, err


def test_hugging_face_keys_of_a_backbone_config_still_load(copy_of):
    checkpoint = copy_of()
    _edit_config(checkpoint, lambda data: (
        data["backbone_cfg"]["text_config"].update(torch_dtype="bfloat16", pad_token_id=None, use_cache=True,
                                                   _name_or_path="x"),
        data["backbone_cfg"]["vision_config"].update(dtype="bfloat16", transformers_version="4.57.3")))
    load_model(checkpoint, device="cpu")


@pytest.mark.parametrize(
    "field, typo, default",
    [("num_inference_timesteps", "num_inference_timestep", 4), ("select_layer", "select_layers", 12)],
)
def test_a_top_level_typo_that_would_leave_a_field_at_its_default_is_refused(copy_of, field, typo, default):
    checkpoint = copy_of()
    _edit_config(checkpoint, lambda data: _rename(data, field, typo))
    message = _load_error(checkpoint)
    assert f"config.json: config has unknown key '{typo}' (did you mean '{field}'?)" in message
    assert f"take its default {default}" in message


# --- processor_config.json: backbone family and empty horizons ----------------------------------------------------


def _edit_processor_kwargs(checkpoint, change):
    _edit_json(checkpoint / "processor_config.json", lambda data: change(data["processor_kwargs"]))


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("model_name", "meta-llama/Llama-3-8B", "a backbone id containing one of"),
        ("model_type", "llama", '"qwen"'),
        ("model_type", "eagle", '"qwen"'),
    ],
)
def test_a_processor_config_for_another_backbone_is_refused(copy_of, field, value, expected, serve_error):
    checkpoint = copy_of()
    _edit_processor_kwargs(checkpoint, lambda kwargs: kwargs.__setitem__(field, value))
    err = serve_error(checkpoint)
    assert f"processor_config.json: field '{field}' is {json.dumps(value)} (str); expected {expected}" in err


@pytest.mark.parametrize("modality", ["action", "state", "video"])
def test_an_empty_delta_indices_is_refused_at_load_naming_the_modality(copy_of, modality, serve_error):
    checkpoint = copy_of()
    _edit_processor_kwargs(
        checkpoint, lambda kwargs: kwargs["modality_configs"]["new_embodiment"][modality].__setitem__("delta_indices", [])
    )
    err = serve_error(checkpoint)
    assert (f"processor_config.json: modality_configs['new_embodiment']['{modality}']['delta_indices'] is []; "
            "expected a non-empty list of ints") in err


# --- a directory where a file belongs ----------------------------------------------------------------------------


def _replace_with_directory(path):
    path.unlink()
    path.mkdir()
    (path / "part-0").write_bytes(b"\0")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("model.safetensors", "expected a safetensors file"),
        ("config.json", "expected the model's JSON config file"),
        ("processor_config.json", "expected a JSON file"),
        ("statistics.json", "expected a JSON file"),
        ("embodiment_id.json", "expected a JSON file"),
    ],
)
def test_a_directory_where_a_checkpoint_file_belongs_is_named_as_a_directory(copy_of, name, expected, serve_error):
    checkpoint = copy_of()
    _replace_with_directory(checkpoint / name)
    err = serve_error(checkpoint)
    assert f"{checkpoint / name} is a directory; {expected}" in err


def test_a_shard_named_by_the_index_that_is_a_directory_is_named_as_a_directory(copy_of):
    from safetensors.torch import load_file

    checkpoint = copy_of()
    names = list(load_file(checkpoint / "model.safetensors"))
    (checkpoint / "model.safetensors").rename(checkpoint / "model-00001-of-00002.safetensors")
    (checkpoint / "model-00002-of-00002.safetensors").mkdir()
    weight_map = {name: "model-00001-of-00002.safetensors" for name in names[1:]}
    weight_map[names[0]] = "model-00002-of-00002.safetensors"
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002.safetensors is a directory; expected a safetensors "
                                              r"file$"):
        load_model(checkpoint, device="cpu")


# --- the state a modality config declares must fit the model ------------------------------------------------------


def test_state_keys_wider_than_max_state_dim_are_refused_at_load(copy_of):
    from safetensors.torch import load_file, save_file

    checkpoint = copy_of()  # a consistent model and processor of width 8, for 9 + 1 + 7 = 17 state values
    _edit_processor_kwargs(checkpoint, lambda kwargs: kwargs.__setitem__("max_state_dim", 8))
    _edit_config(checkpoint, lambda data: data.__setitem__("max_state_dim", 8))
    tensors = load_file(checkpoint / "model.safetensors")
    key = "action_head.state_encoder.layer1.W"
    tensors[key] = tensors[key][:, :8].contiguous()
    save_file(tensors, checkpoint / "model.safetensors")
    message = _load_error(checkpoint)
    assert ("statistics.json: the state keys of 'new_embodiment' have 17 dimensions together, more than "
            "processor_config.json's max_state_dim 8") in message


def test_state_frames_other_than_the_models_state_history_length_are_refused_at_load(copy_of):
    checkpoint = copy_of()
    _edit_processor_kwargs(
        checkpoint, lambda kwargs: kwargs["modality_configs"]["new_embodiment"]["state"].__setitem__("delta_indices",
                                                                                                     [-1, 0])
    )
    message = _load_error(checkpoint)
    assert ("processor_config.json: modality_configs['new_embodiment']['state']['delta_indices'] has 2 frames; "
            "expected config.json's state_history_length 1") in message


@pytest.mark.parametrize("field, value", [("use_alternate_vl_dit", "false"), ("use_vlln", "false"), ("add_pos_embed", None)])
def test_an_architecture_flag_that_is_not_a_bool_is_refused(copy_of, field, value):
    checkpoint = copy_of()
    _edit_config(checkpoint, lambda data: data.__setitem__(field, value))
    message = _load_error(checkpoint)
    assert f"config.json: config field '{field}' is {json.dumps(value)}; expected true or false" in message
