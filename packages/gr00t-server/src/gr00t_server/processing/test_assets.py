"""Offline test assets: a small byte-level BPE tokenizer with the Qwen special tokens and a Qwen3-VL-style chat template.

The tokenizer is trained at run time with the `tokenizers` library (no download), wrapped as a
Qwen2TokenizerFast (the class of the real backbone tokenizer) and saved as tokenizer.json +
tokenizer_config.json + chat_template.jinja, loadable by transformers' AutoTokenizer.
Its special-token ids default to the ones of `gr00t_server.model.presets.tiny_config` (image pad = 1000).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

# Ids the tiny/small model configs expect (gr00t_server.model.presets.TEST_TOKEN_IDS); the rest follow.
DEFAULT_SPECIAL_TOKEN_IDS: Dict[str, int] = {
    "<|image_pad|>": 1000,
    "<|video_pad|>": 1001,
    "<|vision_start|>": 1002,
    "<|vision_end|>": 1003,
    "<|endoftext|>": 1004,
    "<|im_start|>": 1005,
    "<|im_end|>": 1006,
}

# Written for this project in the layout of the Qwen3-VL-Instruct template: no default system prompt,
# every image item becomes <|vision_start|><|image_pad|><|vision_end|>, each turn ends with <|im_end|>\n.
TEST_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'video' -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_CORPUS_WORDS = (
    "put the black bowl on the plate pick up alphabet soup and place it in basket open top drawer of cabinet "
    "turn on stove push to front close microwave cream cheese box ketchup tomato sauce butter milk orange juice "
    "wine bottle rack mug left right middle between next behind table robot arm gripper move towards grasp lift "
    "lower rotate slide stack blocks cube red green blue yellow white wooden cup spoon fork knife towel sink "
    "a an of to in on at by for with from into onto over under user assistant system image video task step "
    "zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 libero kitchen living room study scene"
).split()


def _training_corpus(repeats: int = 4):
    for _ in range(repeats):
        for i, word in enumerate(_CORPUS_WORDS):
            yield " ".join(_CORPUS_WORDS[i : i + 6])
            yield word.capitalize() + ", " + word.upper() + "!"


def build_test_tokenizer(
    out_dir: Union[str, Path],
    special_token_ids: Optional[Mapping[str, int]] = None,
    chat_template: str = TEST_CHAT_TEMPLATE,
) -> Path:
    """Train and save a tiny byte-level BPE tokenizer whose special tokens have `special_token_ids`.

    The regular vocabulary fills ids [0, min(special ids)); special ids must be contiguous after it.
    Returns the output folder (loadable with `AutoTokenizer.from_pretrained(out_dir)`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    ids = dict(special_token_ids or DEFAULT_SPECIAL_TOKEN_IDS)
    ordered = sorted(ids.items(), key=lambda item: item[1])
    base_size = ordered[0][1]
    if [i for _, i in ordered] != list(range(base_size, base_size + len(ordered))):
        raise ValueError(f"special token ids must be contiguous, got {ids}")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if base_size < len(alphabet):
        raise ValueError(f"the first special id must be at least {len(alphabet)} (the byte alphabet), got {base_size}")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=base_size, initial_alphabet=alphabet, special_tokens=[], show_progress=False)
    tokenizer.train_from_iterator(_training_corpus(), trainer=trainer)

    # Pad the regular vocabulary with unreachable entries so the special tokens land on their ids.
    state = json.loads(tokenizer.to_str())
    vocab = state["model"]["vocab"]
    filler = 0
    while len(vocab) < base_size:
        vocab[f"<|unused_{filler}|>"] = len(vocab)
        filler += 1
    if len(vocab) != base_size:
        raise RuntimeError(f"trained vocabulary has {len(vocab)} entries, expected {base_size}")
    tokenizer = Tokenizer.from_str(json.dumps(state))
    tokenizer.add_special_tokens([token for token, _ in ordered])
    for token, expected in ordered:
        if tokenizer.token_to_id(token) != expected:
            raise RuntimeError(f"special token {token} got id {tokenizer.token_to_id(token)}, expected {expected}")

    wrapped = Qwen2TokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t, _ in ordered if t not in ("<|im_end|>", "<|endoftext|>")],
        padding_side="left",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = chat_template
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out))
    if not (out / "chat_template.jinja").is_file():  # older transformers keep it only in tokenizer_config.json
        (out / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    return out
