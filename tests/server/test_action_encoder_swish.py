"""The action encoder's swish is computed as the reference writes it, so bf16 outputs match it exactly."""

import torch

from gr00t_server.model.embodiment_mlp import CategorySpecificLinear, MultiEmbodimentActionEncoder, action_timestep_encoding


def reference_action_encoder(encoder, actions, timesteps, embodiment_id):
    """The upstream formula step by step: W3(x * sigmoid(x)) with x = W2([W1(a), sinusoid(t)])."""
    action_embedding = encoder.W1(actions, embodiment_id)
    t = timesteps.unsqueeze(1).expand(-1, actions.shape[1])
    time_embedding = action_timestep_encoding(t, encoder.hidden_size).to(action_embedding.dtype)
    x = encoder.W2(torch.cat([action_embedding, time_embedding], dim=-1), embodiment_id)
    return encoder.W3(x * torch.sigmoid(x), embodiment_id)


def bf16_encoder_and_inputs():
    torch.manual_seed(0)
    encoder = MultiEmbodimentActionEncoder(action_dim=8, hidden_size=64, num_embodiments=2)
    for module in encoder.modules():
        if isinstance(module, CategorySpecificLinear):
            torch.nn.init.normal_(module.W, std=0.5)  # large pre-activations make the rounding difference show
            torch.nn.init.normal_(module.b, std=0.5)
    encoder = encoder.to(torch.bfloat16)
    actions = torch.randn(3, 16, 8).to(torch.bfloat16)
    return encoder, actions, torch.tensor([0, 250, 999]), torch.tensor([0, 1, 1])


def test_bf16_action_encoder_equals_the_explicit_x_times_sigmoid_formula():
    encoder, actions, timesteps, embodiment_id = bf16_encoder_and_inputs()
    with torch.inference_mode():
        ours = encoder(actions, timesteps, embodiment_id)
        reference = reference_action_encoder(encoder, actions, timesteps, embodiment_id)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, reference)


def test_fused_silu_rounds_differently_in_bf16():
    """Guards the test above: with these inputs F.silu's single rounding is observably different."""
    encoder, actions, timesteps, embodiment_id = bf16_encoder_and_inputs()
    with torch.inference_mode():
        x = encoder.W2(
            torch.cat(
                [
                    encoder.W1(actions, embodiment_id),
                    action_timestep_encoding(timesteps.unsqueeze(1).expand(-1, 16), 64).to(torch.bfloat16),
                ],
                dim=-1,
            ),
            embodiment_id,
        )
    assert not torch.equal(torch.nn.functional.silu(x), x * torch.sigmoid(x))
