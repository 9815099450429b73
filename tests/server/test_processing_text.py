"""Prompt construction (model.md §2.3): language formalization, chat template, image-token expansion, left padding."""

import json

import numpy as np
import pytest
import torch

from gr00t_server.processing.processor import Gr00tN1d7Processor
from gr00t_server.processing.text import (
    build_conversation,
    expand_image_tokens,
    formalize_language,
    render_prompt,
    render_qwen_chat,
)
from gr00t_server.processing.tokenizer import TokenizerNotFoundError, load_tokenizer, resolve_tokenizer_dir


def test_formalize_language_lowercases_and_strips_punctuation():
    assert formalize_language("Pick up the Black Bowl, then STOP!") == "pick up the black bowl then stop"
    assert formalize_language("put it in the 2nd drawer's left_side.") == "put it in the 2nd drawers left_side"


def test_conversation_puts_images_before_text():
    conversation = build_conversation(2, "go")
    assert [item["type"] for item in conversation[0]["content"]] == ["image", "image", "text"]


def test_builtin_layout_matches_qwen3_vl_rendering():
    text = render_qwen_chat(build_conversation(1, "pick up the bowl"))
    assert text == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>pick up the bowl<|im_end|>\n"


def test_expand_image_tokens_per_image_counts():
    text = "a<|image_pad|>b<|image_pad|>c"
    assert expand_image_tokens(text, [2, 3]) == "a" + "<|image_pad|>" * 2 + "b" + "<|image_pad|>" * 3 + "c"
    with pytest.raises(ValueError, match="2 <\\|image_pad\\|> placeholders but 1 images"):
        expand_image_tokens(text, [2])


def test_test_tokenizer_chat_template_renders_like_qwen(tiny_checkpoint):
    tokenizer = load_tokenizer(tiny_checkpoint)
    conversation = build_conversation(2, "pick up the bowl")
    assert render_prompt(conversation, tokenizer) == render_qwen_chat(conversation)
    assert tokenizer.padding_side == "left"


def test_prompt_token_count_for_one_256_frame(tiny_checkpoint):
    processor = Gr00tN1d7Processor.from_pretrained(tiny_checkpoint)
    frame = np.random.default_rng(0).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    # One 256x256 frame stays 256x256 through the eval transform (crop 243, INTER_AREA back to 256) and
    # smart_resize; grid (1, 16, 16) -> 256 patches -> 256 / 4 = 64 <|image_pad|> tokens.
    step = processor.process_step("new_embodiment", {"front": frame}, _new_embodiment_state(), "Pick up the bowl!")
    batch = processor.collate([step])
    tok = processor.tokenizer
    text_tokens = len(tok("pick up the bowl", add_special_tokens=False)["input_ids"])
    ids = batch["input_ids"][0].tolist()
    # <|im_start|> user \n  <|vision_start|> 64 x pad <|vision_end|>  text  <|im_end|> \n
    assert len(ids) == 3 + 1 + 64 + 1 + text_tokens + 2
    assert ids.count(tok.convert_tokens_to_ids("<|image_pad|>")) == 64
    assert ids[:4] == tok.convert_tokens_to_ids(["<|im_start|>"]) + tok("user\n", add_special_tokens=False)["input_ids"] + [
        tok.convert_tokens_to_ids("<|vision_start|>")
    ]
    assert batch["pixel_values"].shape == (256, 1536) and batch["image_grid_thw"].tolist() == [[1, 16, 16]]


def test_collate_left_pads_shorter_prompts(tiny_checkpoint):
    processor = Gr00tN1d7Processor.from_pretrained(tiny_checkpoint)
    frame = np.zeros((1, 256, 256, 3), dtype=np.uint8)
    long = processor.process_step("new_embodiment", {"front": frame}, _new_embodiment_state(), "pick up the black bowl on the plate")
    short = processor.process_step("new_embodiment", {"front": frame}, _new_embodiment_state(), "stop")
    batch = processor.collate([long, short])
    mask = batch["attention_mask"]
    assert mask[0].all() and not mask[1, 0] and mask[1, -1]
    pad_id = processor.tokenizer.pad_token_id
    assert (batch["input_ids"][1][mask[1] == 0] == pad_id).all()
    assert batch["state"].shape == (2, 1, 132) and batch["embodiment_id"].tolist() == [10, 10]
    assert batch["pixel_values"].shape == (512, 1536)


def test_missing_tokenizer_offline_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerNotFoundError, match="not in the local Hugging Face cache"):
        resolve_tokenizer_dir(tmp_path, "nobody/no-such-backbone-xyz", local_files_only=True)


def _new_embodiment_state():
    return {"eef_9d": np.zeros((1, 9), np.float32), "gripper": np.zeros((1, 1), np.float32), "joints": np.zeros((1, 7), np.float32)}


def test_test_tokenizer_loads_with_auto_tokenizer(tiny_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_checkpoint), local_files_only=True)
    ids = tok.convert_tokens_to_ids(["<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>"])
    assert ids == [1000, 1002, 1003, 1005, 1006] and tok.pad_token == "<|endoftext|>"


def test_collate_matches_transformers_qwen3_vl_processor(tiny_checkpoint):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    processor = Gr00tN1d7Processor.from_pretrained(tiny_checkpoint)
    tok = processor.tokenizer
    # Qwen3VLProcessor.__init__ insists on a torchvision video processor; the image/text path does not need it.
    reference = Qwen3VLProcessor.__new__(Qwen3VLProcessor)
    reference.image_processor = Qwen2VLImageProcessor(
        patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        min_pixels=65536, max_pixels=16777216,
    )
    reference.tokenizer, reference.video_processor, reference.chat_template = tok, None, tok.chat_template
    for name in ("image_pad", "video_pad", "vision_start", "vision_end"):
        attr = name.replace("_pad", "")
        setattr(reference, f"{attr}_token", f"<|{name}|>")
        setattr(reference, f"{attr}_token_id", tok.convert_tokens_to_ids(f"<|{name}|>"))
    rng = np.random.default_rng(0)
    steps = [
        processor.process_step(
            "new_embodiment", {"front": rng.integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)}, _new_embodiment_state(), task
        )
        for task in ("Pick up the black bowl on the plate.", "stop")
    ]
    ours = processor.collate(steps)
    theirs = reference(text=[s.prompt for s in steps], images=[s.images[0] for s in steps], return_tensors="pt", padding=True)
    for key in ("input_ids", "attention_mask", "image_grid_thw"):
        assert theirs[key].tolist() == ours[key].tolist(), key
    np.testing.assert_allclose(theirs["pixel_values"].numpy(), ours["pixel_values"].numpy(), atol=1e-6)


_SYSTEM_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
_USER_TURN = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>pick up the bowl<|im_end|>\n"


def _with_system_turn(template):
    return "{{- '" + _SYSTEM_TURN.replace("\n", "\\n") + "' -}}" + template


def test_chat_template_json_wins_over_tokenizer_config_template(copy_of):
    # Qwen-VL Hub layout: tokenizer_config.json and chat_template.json both hold a template; the processor's wins.
    checkpoint = copy_of()
    template = (checkpoint / "chat_template.jinja").read_text()
    (checkpoint / "chat_template.jinja").unlink()
    tokenizer_config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = template
    (checkpoint / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (checkpoint / "chat_template.json").write_text(json.dumps({"chat_template": _with_system_turn(template)}))
    processor = Gr00tN1d7Processor.from_pretrained(checkpoint, local_files_only=True)
    assert processor.build_prompt("Pick up the bowl.", 1) == _SYSTEM_TURN + _USER_TURN


def test_chat_template_json_wins_over_chat_template_jinja(copy_of):
    # transformers 4.57 ProcessorMixin reads the legacy chat_template.json before chat_template.jinja.
    checkpoint = copy_of()
    template = (checkpoint / "chat_template.jinja").read_text()
    (checkpoint / "chat_template.json").write_text(json.dumps({"chat_template": _with_system_turn(template)}))
    processor = Gr00tN1d7Processor.from_pretrained(checkpoint, local_files_only=True)
    assert processor.build_prompt("Pick up the bowl.", 1) == _SYSTEM_TURN + _USER_TURN


def test_named_chat_templates_render_the_default_one(copy_of):
    checkpoint = copy_of()
    (checkpoint / "additional_chat_templates").mkdir()
    (checkpoint / "additional_chat_templates" / "tool_use.jinja").write_text("{{- 'tools' -}}")
    processor = Gr00tN1d7Processor.from_pretrained(checkpoint, local_files_only=True)
    frame = np.zeros((1, 256, 256, 3), dtype=np.uint8)
    step = processor.process_step("new_embodiment", {"front": frame}, _new_embodiment_state(), "Pick up the bowl.")
    assert step.prompt.startswith("<|im_start|>user\n<|vision_start|>") and step.prompt.endswith("bowl<|im_end|>\n")


def test_named_chat_templates_without_a_default_are_refused_at_load(copy_of):
    checkpoint = copy_of()
    (checkpoint / "chat_template.jinja").unlink()
    (checkpoint / "additional_chat_templates").mkdir()
    (checkpoint / "additional_chat_templates" / "tool_use.jinja").write_text("{{- 'tools' -}}")
    with pytest.raises(ValueError, match=r"tokenizer folder .*ckpt has named chat templates \['tool_use'\] but none "
                                         r"named 'default'"):
        Gr00tN1d7Processor.from_pretrained(checkpoint, local_files_only=True)


def test_chat_template_json_beside_named_templates_is_refused_as_transformers_does(copy_of):
    checkpoint = copy_of()
    (checkpoint / "chat_template.json").write_text(json.dumps({"chat_template": "{{- 'x' -}}"}))
    (checkpoint / "additional_chat_templates").mkdir()
    (checkpoint / "additional_chat_templates" / "tool_use.jinja").write_text("{{- 'tools' -}}")
    with pytest.raises(ValueError, match="holds both chat_template.json and additional_chat_templates/"):
        Gr00tN1d7Processor.from_pretrained(checkpoint, local_files_only=True)


def test_cached_prompt_tokens_equal_the_tokenizers_for_batches_of_mixed_lengths(tiny_checkpoint):
    """The token cache (rows seen before, left-padded with the pad token) gives the tokenizer's own input_ids and
    attention_mask, and a tokenizer put in the processor's place is asked again."""
    processor = Gr00tN1d7Processor.from_pretrained(tiny_checkpoint)
    tokenizer = processor.tokenizer
    prompts = [processor.build_prompt(text, 2) for text in ("pick up the bowl", "open the top drawer and look in it", "x")]
    grids = np.array([[1, 16, 16]] * 6)

    def tokenizer_own(rows):
        texts = [expand_image_tokens(prompts[row], [64, 64]) for row in rows]
        return tokenizer(texts, padding=True, return_tensors="np")

    for rows in ([0], [1, 0, 2], [2, 2, 1], [0]):  # new rows tokenized, then rows all cached
        got = processor._tokenize([prompts[row] for row in rows], [2] * len(rows), grids[: 2 * len(rows)])
        own = tokenizer_own(rows)
        assert np.array_equal(got["input_ids"].numpy(), own["input_ids"])
        assert np.array_equal(got["attention_mask"].numpy(), own["attention_mask"])
        assert got["input_ids"].dtype == got["attention_mask"].dtype == torch.int64

    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def __call__(self, *args, **kwargs):
            calls.append(args[0])
            return tokenizer(*args, **kwargs)

    processor.tokenizer = Counting()
    processor._tokenize([prompts[0]], [2], grids[:2])
    assert len(calls) == 1


def test_cached_prompt_tokens_follow_tokens_added_to_the_tokenizer_in_place(tiny_checkpoint):
    """add_tokens on the loaded tokenizer (a word its vocabulary held: no size changes) left the prompts seen before
    with their old ids: the model got other tokens than its tokenizer makes."""
    processor = Gr00tN1d7Processor.from_pretrained(tiny_checkpoint)
    rng = np.random.default_rng(0)
    video = {k: rng.integers(0, 256, (1, 1, 224, 224, 3), dtype=np.uint8) for k in ("image", "wrist_image")}
    state = {k: np.zeros((1, 1, 2 if k == "gripper" else 1)) for k in ("x", "y", "z", "roll", "pitch", "yaw", "gripper")}
    before = processor.process_batch("libero_sim", video, state, ["pick up the bowl"])["input_ids"]
    processor.tokenizer.add_tokens(["bowl"])
    after = processor.process_batch("libero_sim", video, state, ["pick up the bowl"])["input_ids"]
    fresh = Gr00tN1d7Processor.from_pretrained(tiny_checkpoint)
    fresh.tokenizer.add_tokens(["bowl"])
    assert torch.equal(after, fresh.process_batch("libero_sim", video, state, ["pick up the bowl"])["input_ids"])
    assert not torch.equal(after, before)
