"""Forward behaviour of a tiny GR00T N1.7: shapes, dtypes, determinism, batching, backbone, Euler math."""

import pytest
import torch

from gr00t_server.model import TEST_TOKEN_IDS, Gr00tN1d7, resolve_dtype

GRID = (1, 8, 8)  # 64 patches -> 16 image tokens after the 2x2 merge
PATCH_DIM = 3 * 2 * 16 * 16


def make_inputs(config, batch_size=1, seed=0, text_len=6):
    """Collated inputs shaped like the processor's: [text, vision_start, image pads, vision_end, text]."""
    g = torch.Generator().manual_seed(seed)
    n_image_tokens = GRID[0] * GRID[1] * GRID[2] // 4
    rows = []
    for _ in range(batch_size):
        prefix = torch.randint(10, 900, (3,), generator=g)
        suffix = torch.randint(10, 900, (text_len,), generator=g)
        image = torch.cat([
            torch.tensor([TEST_TOKEN_IDS["vision_start_token_id"]]),
            torch.full((n_image_tokens,), config.image_token_id),
            torch.tensor([TEST_TOKEN_IDS["vision_end_token_id"]]),
        ])
        rows.append(torch.cat([prefix, image, suffix]))
    input_ids = torch.stack(rows).long()
    n_patches = GRID[0] * GRID[1] * GRID[2]
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(batch_size * n_patches, PATCH_DIM, generator=g),
        "image_grid_thw": torch.tensor([GRID] * batch_size, dtype=torch.long),
        "state": torch.randn(batch_size, 1, config.max_state_dim, generator=g),
        "embodiment_id": torch.arange(batch_size, dtype=torch.long) * 3,
    }


def concat_inputs(a, b):
    return {key: torch.cat([a[key], b[key]]) for key in a}


def test_get_action_returns_an_action_chunk_per_sample(model, config):
    out = model.get_action(make_inputs(config, batch_size=2), generator=torch.Generator().manual_seed(0))
    assert out["action_pred"].shape == (2, config.action_horizon, config.max_action_dim)
    assert out["action_pred"].dtype == torch.float32
    assert out["backbone_features"].shape[-1] == config.backbone_embedding_dim
    assert out["state_features"].shape == (2, 1, config.input_embedding_dim)
    assert torch.isfinite(out["action_pred"]).all()


def test_the_same_generator_seed_gives_the_same_actions(model, config):
    inputs = make_inputs(config)
    first = model.get_action(inputs, generator=torch.Generator().manual_seed(7))["action_pred"]
    second = model.get_action(inputs, generator=torch.Generator().manual_seed(7))["action_pred"]
    other = model.get_action(inputs, generator=torch.Generator().manual_seed(8))["action_pred"]
    assert torch.equal(first, second)
    assert not torch.allclose(first, other)


def test_explicit_noise_replaces_the_random_draw(model, config):
    inputs = make_inputs(config)
    noise = torch.randn(1, config.action_horizon, config.max_action_dim)
    first = model.get_action(inputs, noise=noise, generator=torch.Generator().manual_seed(1))["action_pred"]
    second = model.get_action(inputs, noise=noise, generator=torch.Generator().manual_seed(2))["action_pred"]
    assert torch.equal(first, second)


def test_noise_of_the_wrong_shape_is_rejected(model, config):
    with pytest.raises(ValueError, match="noise must have shape"):
        model.get_action(make_inputs(config), noise=torch.zeros(1, 3, 4))


def test_a_batch_of_two_equals_two_single_calls(model, config):
    a, b = make_inputs(config, seed=1), make_inputs(config, seed=2)
    b["embodiment_id"] = torch.tensor([5])
    noise = torch.randn(2, config.action_horizon, config.max_action_dim)
    batched = model.get_action(concat_inputs(a, b), noise=noise)["action_pred"]
    single_a = model.get_action(a, noise=noise[:1])["action_pred"]
    single_b = model.get_action(b, noise=noise[1:])["action_pred"]
    torch.testing.assert_close(batched, torch.cat([single_a, single_b]), rtol=1e-4, atol=1e-5)


def test_backbone_features_are_the_last_layer_output_before_the_final_norm(model, config):
    inputs = make_inputs(config)
    features = model.backbone(inputs)["backbone_features"]
    with torch.no_grad():
        reference = model.backbone.model(**inputs_for_hf(inputs), output_hidden_states=True, use_cache=False)
    torch.testing.assert_close(features, reference.hidden_states[-1])
    normed = model.backbone.language_model.norm(features)
    assert not torch.allclose(features, normed, atol=1e-3)


def test_left_padded_batches_match_the_transformers_forward(model, config):
    inputs = concat_inputs(make_inputs(config, seed=3), make_inputs(config, seed=4))
    inputs["input_ids"][0, :2] = 0
    inputs["attention_mask"][0, :2] = 0
    features = model.backbone(inputs)["backbone_features"]
    with torch.no_grad():
        reference = model.backbone.model(**inputs_for_hf(inputs), output_hidden_states=True, use_cache=False)
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(features[valid], reference.hidden_states[-1][valid])


def test_an_image_token_count_that_disagrees_with_the_images_is_named(model, config):
    inputs = make_inputs(config)
    inputs["input_ids"][0, 5] = 7
    with pytest.raises(ValueError, match="15 image tokens"):
        model.backbone(inputs)


def inputs_for_hf(inputs):
    return {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}


def test_backbone_masks_mark_image_tokens_and_valid_tokens(model, config):
    inputs = make_inputs(config)
    inputs["attention_mask"][0, 0] = 0
    out = model.backbone(inputs)
    assert out["image_mask"].sum().item() == 16
    assert out["backbone_attention_mask"].dtype == torch.bool
    assert not out["backbone_attention_mask"][0, 0]


def test_even_dit_blocks_alternate_between_text_and_image_tokens(model, config):
    inputs = make_inputs(config)
    backbone = model.backbone(inputs)
    dit = model.action_head.model
    sa_embs = torch.randn(1, 1 + config.action_horizon, config.input_embedding_dim)
    timestep = torch.tensor([250])
    outputs = {}
    hooks = [dit.transformer_blocks[i].register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o)) for i in (0, 2)]
    try:
        def run(vl):
            with torch.no_grad():
                dit(sa_embs, vl, timestep, backbone["image_mask"], backbone["backbone_attention_mask"])
            return dict(outputs)

        vl = torch.randn_like(backbone["backbone_features"])
        base = run(vl)
        image_changed = run(vl + 5.0 * backbone["image_mask"][..., None])
        text_changed = run(vl + 5.0 * (~backbone["image_mask"])[..., None])
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(base[0], image_changed[0])  # block 0 sees only non-image tokens
    assert not torch.allclose(base[2], image_changed[2])  # block 2 sees image tokens
    assert not torch.allclose(base[0], text_changed[0])


def test_euler_sampling_adds_dt_times_velocity_at_buckets_0_250_500_750(config):
    torch.manual_seed(0)
    model = Gr00tN1d7(config).eval()
    decoder = model.action_head.action_decoder.layer2
    velocity = torch.linspace(-1, 1, config.max_action_dim)
    with torch.no_grad():
        decoder.W.zero_()
        decoder.b.zero_()
        decoder.b[4] = velocity
    seen_timesteps = []
    model.action_head.action_encoder.register_forward_hook(lambda m, args, out: seen_timesteps.append(args[1].tolist()))
    inputs = make_inputs(config)
    inputs["embodiment_id"] = torch.tensor([4])
    noise = torch.randn(1, config.action_horizon, config.max_action_dim)
    out = model.get_action(inputs, noise=noise)["action_pred"]
    steps = config.num_inference_timesteps
    expected = noise + sum((1.0 / steps) * velocity for _ in range(steps))
    torch.testing.assert_close(out, expected.expand_as(out))
    assert seen_timesteps == [[0], [250], [500], [750]]


def test_floating_inputs_are_cast_to_the_model_dtype(config):
    torch.manual_seed(0)
    model = Gr00tN1d7(config).to(torch.bfloat16).eval()
    out = model.get_action(make_inputs(config), generator=torch.Generator().manual_seed(0))
    assert out["action_pred"].dtype == torch.bfloat16
    assert torch.isfinite(out["action_pred"].float()).all()


def test_a_state_of_the_wrong_width_is_rejected(model, config):
    inputs = make_inputs(config)
    inputs["state"] = torch.zeros(1, 1, 7)
    with pytest.raises(ValueError, match="max_state_dim"):
        model.get_action(inputs)


def test_missing_inputs_are_named(model, config):
    inputs = make_inputs(config)
    del inputs["embodiment_id"]
    with pytest.raises(KeyError, match="embodiment_id"):
        model.get_action(inputs)


@pytest.mark.parametrize(
    "device, dtype, expected",
    [("cpu", None, torch.float32), ("cuda", None, torch.bfloat16), ("cuda:0", "float32", torch.float32),
     ("cpu", "bf16", torch.bfloat16), ("cpu", "auto", torch.float32)],
)
def test_resolve_dtype_defaults_to_bf16_on_cuda_and_fp32_on_cpu(device, dtype, expected):
    assert resolve_dtype(device, dtype) == expected


def test_resolve_dtype_rejects_unknown_names():
    with pytest.raises(ValueError, match="int7"):
        resolve_dtype("cpu", "int7")


def test_action_encoder_sinusoid_is_sin_then_cos_with_divisor_half():
    from gr00t_server.model.embodiment_mlp import action_timestep_encoding

    encoding = action_timestep_encoding(torch.tensor([[0.0, 500.0]]), 8)
    assert torch.equal(encoding[0, 0], torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]))
    frequency = 10000.0 ** (-1 / 4)  # k=1, half=4
    torch.testing.assert_close(encoding[0, 1, 1], torch.sin(torch.tensor(500.0 * frequency)))
    torch.testing.assert_close(encoding[0, 1, 5], torch.cos(torch.tensor(500.0 * frequency)))


def test_dit_timestep_projection_is_cos_then_sin_with_divisor_half_minus_one():
    from gr00t_server.model.dit import dit_timestep_projection

    projection = dit_timestep_projection(torch.tensor([0, 250]))
    assert torch.equal(projection[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    frequency = 10000.0 ** (-1 / 127)  # k=1, half-1=127
    torch.testing.assert_close(projection[1, 1], torch.cos(torch.tensor(250.0 * frequency)))
    torch.testing.assert_close(projection[1, 129], torch.sin(torch.tensor(250.0 * frequency)))


def test_adaln_chunks_are_scale_then_shift_in_blocks_and_shift_then_scale_at_the_output(config):
    torch.manual_seed(0)
    dit = Gr00tN1d7(config).action_head.model
    width = dit.inner_dim
    first, second = torch.full((width,), 0.5), torch.full((width,), 2.0)
    with torch.no_grad():
        for linear in (dit.transformer_blocks[0].norm1.linear, dit.proj_out_1):
            linear.weight.zero_()
            linear.bias.copy_(torch.cat([first, second]))
    x = torch.randn(1, 3, width)
    temb = torch.randn(1, width)
    block_norm = dit.transformer_blocks[0].norm1
    torch.testing.assert_close(block_norm(x, temb), block_norm.norm(x) * (1 + first) + second)
    outputs = {}
    dit.proj_out_2.register_forward_hook(lambda m, args, out: outputs.setdefault("in", args[0]))
    vl = torch.randn(1, 5, config.backbone_embedding_dim)
    masks = torch.ones(1, 5, dtype=torch.bool)
    masks_img = torch.tensor([[True, True, False, False, False]])
    final_hidden = {}
    dit.transformer_blocks[-1].register_forward_hook(lambda m, a, out: final_hidden.setdefault("h", out))
    with torch.no_grad():
        dit(x, vl, torch.tensor([500]), masks_img, masks)
    expected = dit.norm_out(final_hidden["h"]) * (1 + second) + first
    torch.testing.assert_close(outputs["in"], expected)


def left_padded_pair(config, short_len, long_len):
    """Inputs of two rows whose prompts differ in length, the shorter left-padded as the processor does, and the
    shorter row's inputs alone."""
    short, long = make_inputs(config, seed=5, text_len=short_len), make_inputs(config, seed=6, text_len=long_len)
    pad = long_len - short_len
    padded = dict(short)
    padded["input_ids"] = torch.cat([torch.zeros(1, pad, dtype=torch.long), short["input_ids"]], dim=1)
    padded["attention_mask"] = torch.cat([torch.zeros(1, pad, dtype=torch.long), short["attention_mask"]], dim=1)
    return concat_inputs(padded, long), short, long


@pytest.mark.parametrize("alternate", [True, False], ids=["AlternateVLDiT", "plain DiT"])
def test_a_row_gets_its_single_call_action_whatever_the_prompt_lengths_of_its_batch(config, alternate):
    """Upstream's VL self-attention (and its plain DiT's cross-attention) has no padding mask: a row padded for
    another row's longer prompt attended to that padding, so its action depended on who shared the batch."""
    import dataclasses

    from gr00t_server.model import Gr00tN1d7

    config = dataclasses.replace(config, use_alternate_vl_dit=alternate)
    assert config.vl_self_attention_cfg  # the layer the padding leaked through
    torch.manual_seed(0)
    model = Gr00tN1d7(config).eval()
    batch, short, long = left_padded_pair(config, short_len=2, long_len=40)
    noise = torch.randn(2, config.action_horizon, config.max_action_dim)
    batched = model.get_action(batch, noise=noise)["action_pred"]
    alone_short = model.get_action(short, noise=noise[:1])["action_pred"]
    alone_long = model.get_action(long, noise=noise[1:])["action_pred"]
    torch.testing.assert_close(batched[:1], alone_short, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched[1:], alone_long, rtol=1e-5, atol=1e-6)
