"""Prompt construction (model.md §2.3): language formalization, chat conversation, image-token expansion."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from gr00t_client.policy import ObservationError
from gr00t_client.wire_errors import lone_surrogate_at

IMAGE_PAD_TOKEN = "<|image_pad|>"
VISION_START_TOKEN = "<|vision_start|>"
VISION_END_TOKEN = "<|vision_end|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"

_NON_WORD = re.compile(r"[^\w\s]")
_PROBE_INSTRUCTION = "pick up the cube"  # checks the chat template at load (formalized: lower-case, no punctuation)


def formalize_language(text: str) -> str:
    """Lower-case and strip punctuation (everything that is neither a word character nor whitespace)."""
    return _NON_WORD.sub("", text.lower())


def refuse_lone_surrogate(text: str, where: str) -> None:
    """ObservationError naming `where` and the position when `text`, as the tokenizer gets it, holds a lone surrogate:
    the tokenizer failed on one with a TypeError naming no text, as an internal error. Formalization strips one (it
    is no word character), as the reference's does."""
    surrogate = lone_surrogate_at(text)
    if surrogate is not None:
        raise ObservationError(f"{where} holds a lone surrogate at position {surrogate} ({text!r:.80}), which is not "
                               "text (it has no UTF-8 encoding) and this checkpoint's formalize_language is off, so "
                               "its tokenizer would get it; send the instruction as valid Unicode text")


def reserved_tokens(tokenizer: Any) -> Tuple[str, ...]:
    """The strings the prompt gives a meaning of their own: the tokenizer's special tokens (its vision and chat
    placeholders, end of text) and those this module writes. An instruction holding one is no longer plain text."""
    tokens = {IMAGE_PAD_TOKEN, VISION_START_TOKEN, VISION_END_TOKEN, IM_START_TOKEN, IM_END_TOKEN}
    if tokenizer is not None:
        tokens.update(getattr(tokenizer, "all_special_tokens", None) or ())
        for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
            if getattr(added, "special", False):
                tokens.add(str(added.content))
    return tuple(sorted(token for token in tokens if token))


def build_conversation(num_images: int, text: str) -> List[Dict[str, Any]]:
    """One user turn: `num_images` image items first (time-major, view-minor), then one text item."""
    content: List[Dict[str, Any]] = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def render_qwen_chat(conversation: Sequence[Dict[str, Any]], add_generation_prompt: bool = False) -> str:
    """Fallback renderer with the Qwen3-VL-Instruct layout, used only when no chat template is available."""
    parts: List[str] = []
    for message in conversation:
        parts.append(f"{IM_START_TOKEN}{message['role']}\n")
        content = message["content"]
        if isinstance(content, str):
            parts.append(content)
        else:
            for item in content:
                if item["type"] == "image":
                    parts.append(f"{VISION_START_TOKEN}{IMAGE_PAD_TOKEN}{VISION_END_TOKEN}")
                elif item["type"] == "text":
                    parts.append(item["text"])
                else:
                    raise ValueError(f"unsupported content type {item['type']!r} in the conversation")
        parts.append(f"{IM_END_TOKEN}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START_TOKEN}assistant\n")
    return "".join(parts)


def default_chat_template(template: Union[str, Dict[str, str], None], owner: str) -> Optional[str]:
    """One template; of named templates (a dict) the one named "default", which transformers renders by default."""
    if not isinstance(template, dict):
        return template
    if "default" not in template:
        raise ValueError(f"{owner} has named chat templates {sorted(template)} but none named 'default'; add "
                         f"chat_template.jinja (the default template) beside them")
    return template["default"]


def render_prompt(conversation: Sequence[Dict[str, Any]], tokenizer: Any, chat_template: Optional[str] = None) -> str:
    """Render with the checkpoint/backbone chat template (no generation prompt), else the built-in layout."""
    template = default_chat_template(chat_template or getattr(tokenizer, "chat_template", None), "the tokenizer")
    if template is None:
        return render_qwen_chat(conversation)
    return tokenizer.apply_chat_template(
        list(conversation), chat_template=template, tokenize=False, add_generation_prompt=False
    )


def check_chat_template(tokenizer: Any, source: Any) -> None:
    """ValueError naming `source` unless the chat template renders a one-image turn with one image placeholder and the
    instruction: checked at load, as every request renders it."""
    try:
        prompt = render_prompt(build_conversation(1, _PROBE_INSTRUCTION), tokenizer)
    except Exception as exc:  # a template raises whatever its expressions do; jinja2's TemplateError mostly
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{source}: the chat template does not render ({type(exc).__name__}: {reason}); copy the "
                         f"backbone's chat template again") from None
    if prompt.count(IMAGE_PAD_TOKEN) != 1 or _PROBE_INSTRUCTION not in prompt:
        raise ValueError(f"{source}: the chat template renders a user turn of one image and the instruction "
                         f"{_PROBE_INSTRUCTION!r} as {prompt[:120]!r}; expected one {IMAGE_PAD_TOKEN} per image and "
                         f"the instruction text")


def expand_image_tokens(text: str, tokens_per_image: Sequence[int], image_token: str = IMAGE_PAD_TOKEN) -> str:
    """Replace the i-th `image_token` by tokens_per_image[i] copies of it (what Qwen3VLProcessor does)."""
    pieces = text.split(image_token)
    if len(pieces) - 1 != len(tokens_per_image):
        raise ValueError(
            f"prompt has {len(pieces) - 1} {image_token} placeholders but {len(tokens_per_image)} images were given"
        )
    out = [pieces[0]]
    for count, piece in zip(tokens_per_image, pieces[1:]):
        out.append(image_token * int(count))
        out.append(piece)
    return "".join(out)
