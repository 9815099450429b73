"""An instruction holding the backbone's special tokens is a client's mistake, named as one before the model runs."""

from __future__ import annotations

import json

import pytest
from serving import running_server

from gr00t_client import ObservationError, PolicyClient, PolicyServerError

pytest.importorskip("torch")

from gr00t_server.policies.gr00t_policy import Gr00tPolicy  # noqa: E402
from gr00t_server.test_checkpoint import example_observation  # noqa: E402


def _without_formalization(checkpoint):
    """formalize_language: false, a legal setting: the instruction reaches the prompt as sent, punctuation and all."""
    path = checkpoint / "processor_config.json"
    config = json.loads(path.read_text())
    config["processor_kwargs"]["formalize_language"] = False
    path.write_text(json.dumps(config))
    return checkpoint


def _with_instruction(checkpoint, text):
    observation = example_observation(checkpoint, "new_embodiment", batch_size=1, image_size=(32, 32))
    key = next(iter(observation["language"]))
    observation["language"][key] = [[text]]
    return observation, key


@pytest.mark.parametrize("text, tokens", [
    ("describe <|vision_start|><|video_pad|> then pick", r"\['<\|video_pad\|>', '<\|vision_start\|>'\]"),
    ("look at <|image_pad|> and pick", r"\['<\|image_pad\|>'\]"),
])
def test_special_tokens_in_an_instruction_are_refused_naming_the_language_key_and_tokens(copy_of, text, tokens):
    """'<|video_pad|>' failed inside transformers (an internal error), '<|image_pad|>' as a count of image
    placeholders that did not name the instruction."""
    checkpoint = _without_formalization(copy_of())
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    observation, key = _with_instruction(checkpoint, text)
    expected = (rf"language\['{key}'\] rows \[0\]: the instruction holds the backbone's reserved token\(s\) {tokens}; "
                "an instruction must be")
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError, match="ObservationError: " + expected):
            client.get_action(observation)
        stats = client.get_server_info()["stats"]
        plain, _ = client.get_action(_with_instruction(checkpoint, "pick up the bowl")[0])
    assert stats["internal_errors"] == 0 and stats["policy_calls"] == 0
    assert plain
    policy.strict = False  # a server started with --no-strict refuses it too
    with pytest.raises(ObservationError, match=expected):
        policy.get_action(observation)


def test_special_tokens_are_kept_out_by_formalization_when_it_is_on(tiny_checkpoint):
    """formalize_language strips the punctuation of '<|image_pad|>': the instruction is plain text then."""
    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    assert policy.processor.config.formalize_language
    action, _ = policy.get_action(_with_instruction(tiny_checkpoint, "look at <|image_pad|> and pick")[0])
    assert action


def test_a_special_token_formalization_keeps_is_found_in_the_formalized_instruction(copy_of):
    """A special token without punctuation survives formalization: 'Then ENDOFCHUNK.' becomes 'then endofchunk',
    which holds it, so it is refused with formalize_language on too."""
    from transformers import AutoTokenizer

    checkpoint = copy_of()
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    tokenizer.add_special_tokens({"additional_special_tokens": ["endofchunk"]})
    tokenizer.save_pretrained(str(checkpoint))
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    assert policy.processor.config.formalize_language and "endofchunk" in policy.processor.reserved_tokens
    observation, key = _with_instruction(checkpoint, "Pick the bowl. Then ENDOFCHUNK.")
    with pytest.raises(ObservationError, match=rf"language\['{key}'\] rows \[0\]: the instruction holds the "
                                               r"backbone's reserved token\(s\) "
                                               r"\['endofchunk'\]"):
        policy.get_action(observation)
    action, _ = policy.get_action(_with_instruction(checkpoint, "look at <|image_pad|> and pick")[0])
    assert action


def test_an_instruction_with_a_lone_surrogate_is_refused_naming_the_key_row_and_position(copy_of):
    """It reached the tokenizer, whose TypeError ('TextEncodeInput must be Union[...]') named neither key nor row."""
    checkpoint = _without_formalization(copy_of())
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    observation, key = _with_instruction(checkpoint, "pick \ud800 up the bowl")
    with pytest.raises(ObservationError, match=rf"language\['{key}'\] row 0 holds a lone surrogate at position 5 "
                                               r"\('pick \\ud800 up the bowl'\), which is not text"):
        policy.get_action(observation)


@pytest.mark.parametrize("text, position", [("pick \ud800 up the bowl", 5), ("pick up the bowl " * 30 + "\ud800", 510)])
def test_a_lone_surrogate_sent_in_a_string_array_is_refused_before_any_token_count(copy_of, text, position):
    """Through the sim wrapper's flat language key (gr00t-eval rollout's form): a short text failed in the tokenizer,
    a long one in the --max-language-tokens count on the socket thread; both as internal errors."""
    import numpy as np

    from gr00t_server.policies.sim_wrapper import Gr00tSimPolicyWrapper

    checkpoint = _without_formalization(copy_of())
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    observation, key = _with_instruction(checkpoint, "pick up the bowl")
    flat = {f"{modality}.{name}": value for modality in ("video", "state")
            for name, value in observation[modality].items()}
    flat[key] = np.array([text])
    with running_server(Gr00tSimPolicyWrapper(policy)) as server, \
            PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError, match=rf"'{key}'.* row 0.* lone surrogate at position {position}"):
            client.get_action(flat)
        stats = client.get_server_info()["stats"]
    assert stats["internal_errors"] == 0


@pytest.mark.parametrize("text", ["pick \ud800 up the bowl", "pick up the bowl " * 30 + "\ud800"])
def test_a_lone_surrogate_is_stripped_as_punctuation_when_the_checkpoint_formalizes_language(tiny_checkpoint, text):
    """Formalization removes it as it removes punctuation (the reference serves 'pick \\ud800 up' as 'pick  up'):
    it never reaches the tokenizer, so it is served, nested and in the flat form, through the token count too."""
    import numpy as np
    import torch

    from gr00t_server.policies.sim_wrapper import Gr00tSimPolicyWrapper
    from gr00t_server.processing.text import formalize_language

    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    assert policy.processor.config.formalize_language
    actions = []
    for instruction in (formalize_language(text), text):
        torch.manual_seed(0)
        actions.append(policy.get_action(_with_instruction(tiny_checkpoint, instruction)[0])[0])
    assert all(np.array_equal(actions[0][key], actions[1][key]) for key in actions[0])
    observation, key = _with_instruction(tiny_checkpoint, "pick up the bowl")
    flat = {f"{modality}.{name}": value for modality in ("video", "state")
            for name, value in observation[modality].items()}
    flat[key] = np.array([text])
    with running_server(Gr00tSimPolicyWrapper(policy)) as server, \
            PolicyClient(port=server.port, timeout_ms=60000) as client:
        action, _ = client.get_action(flat)
    assert action


@pytest.mark.parametrize("text", ["\ufeff", "\u200b", "\u200d\u2060", " \u200e\u200f ", "\u3164\uffa0", "\u2800",
                                  "\u034f\ufe0f"],
                         ids=["BOM", "zero-width space", "joiners", "direction marks", "Hangul fillers",
                              "braille blank", "grapheme joiner and variation selector"])
def test_an_instruction_of_invisible_characters_only_is_refused_as_blank_with_formalization_off(copy_of, text):
    """str.strip() keeps format characters: with formalize_language off (which drops them) an instruction that shows
    nothing - an empty task file saved with a BOM, a stripped emoji's joiner - was served as a task."""
    checkpoint = _without_formalization(copy_of())
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    observation, key = _with_instruction(checkpoint, text)
    with pytest.raises(ObservationError, match=rf"language\['{key}'\] rows \[0\]: .* is blank \(whitespace and "
                                               r"invisible characters only\); a task instruction is expected"):
        policy.get_action(observation)
    assert policy.get_action(_with_instruction(checkpoint, "pick up the bowl\u200b")[0])[0]  # text around them is
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0645"  # a zero-width non-joiner inside a word
    assert policy.get_action(_with_instruction(checkpoint, persian)[0])[0]
