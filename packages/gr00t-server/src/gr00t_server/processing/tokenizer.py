"""Find and load the backbone tokenizer, chat template and image-processor settings.

Order: the checkpoint folder (or its `processor/` sub-folder) when it has tokenizer files, then the
backbone's `model_name` from the local Hugging Face cache when that holds the tokenizer files and
preprocessor_config.json, then from the Hub (fails offline, naming what the cache lacks).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from gr00t_client.file_names import non_utf8_path_problem

from ..git_lfs import git_lfs_pointer_problem
from .checkpoint_files import _read_json, _refuse_broken_link
from .text import check_chat_template, default_chat_template
from .vision_patches import PREPROCESSOR_CONFIG_NAME, VisionPatchConfig

logger = logging.getLogger(__name__)

BACKBONE_FILE_PATTERNS = [
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    PREPROCESSOR_CONFIG_NAME,
]
CHAT_TEMPLATE_DIR = "additional_chat_templates"
_SMALL_JSON_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


class TokenizerNotFoundError(OSError):
    """The backbone tokenizer is neither in the checkpoint nor obtainable from the Hub."""


def has_tokenizer_files(folder: Union[str, Path]) -> bool:
    """True when `folder` holds a tokenizer.json or tokenizer_config.json; FileNotFoundError naming the target of
    either that is a broken link (else a dangling tokenizer.json was rebuilt from vocab.json and merges.txt)."""
    folder = Path(folder)
    _refuse_broken_link(folder / "tokenizer.json")
    _refuse_broken_link(folder / "tokenizer_config.json")
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()


def resolve_tokenizer_dir(checkpoint_dir: Union[str, Path], model_name: str, local_files_only: bool = False) -> Path:
    """The local folder to load the tokenizer from (see module docstring for the order)."""
    root = Path(checkpoint_dir)
    for folder in (root, root / "processor"):
        if has_tokenizer_files(folder):
            return folder
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
        raise TokenizerNotFoundError("huggingface_hub is required to fetch the backbone tokenizer") from exc
    try:
        cached = Path(snapshot_download(model_name, allow_patterns=BACKBONE_FILE_PATTERNS, local_files_only=True))
    except Exception as cache_error:  # not cached: try the Hub unless told not to
        if local_files_only:
            raise TokenizerNotFoundError(
                f"No tokenizer files in checkpoint {str(root)!r} and {model_name!r} is not in the local Hugging Face "
                f"cache ({type(cache_error).__name__})"
            ) from cache_error
    else:
        # The cache returns the snapshot folder whatever it holds (AutoConfig or AutoTokenizer may have fetched a part).
        missing = missing_backbone_files(cached)
        if not missing:
            return cached
        if local_files_only:
            raise TokenizerNotFoundError(_incomplete_backbone_message(root, model_name, cached, missing))
        logger.info("the Hugging Face cache of %s lacks %s", model_name, ", ".join(missing))
    try:
        logger.info("downloading tokenizer/processor files of %s from the Hugging Face Hub", model_name)
        fetched = Path(snapshot_download(model_name, allow_patterns=BACKBONE_FILE_PATTERNS))
    except Exception as exc:
        raise TokenizerNotFoundError(
            f"No tokenizer files in checkpoint {str(root)!r}, and the backbone tokenizer {model_name!r} could not be "
            f"fetched from the Hugging Face Hub ({type(exc).__name__}: {exc}). Copy tokenizer.json, "
            f"tokenizer_config.json and the chat template of {model_name} into the checkpoint folder, or pre-fill the "
            f"Hugging Face cache with `hf download {model_name}`."
        ) from exc
    missing = missing_backbone_files(fetched)  # offline (HF_HUB_OFFLINE, no network) it returns the cache as it is
    if missing:
        raise TokenizerNotFoundError(_incomplete_backbone_message(root, model_name, fetched, missing))
    return fetched


def missing_backbone_files(folder: Union[str, Path]) -> List[str]:
    """The files a backbone folder lacks to serve as the tokenizer folder: tokenizer.json (or vocab.json and
    merges.txt), tokenizer_config.json and preprocessor_config.json (a broken link counts as missing)."""
    folder = Path(folder)
    missing = [name for name in ("tokenizer_config.json", PREPROCESSOR_CONFIG_NAME) if not (folder / name).is_file()]
    vocabulary = all((folder / name).is_file() for name in ("vocab.json", "merges.txt"))
    if not (folder / "tokenizer.json").is_file() and not vocabulary:
        missing.insert(0, "tokenizer.json")
    return missing


def _incomplete_backbone_message(root: Path, model_name: str, folder: Path, missing: List[str]) -> str:
    names = missing[0] if len(missing) == 1 else f"{', '.join(missing[:-1])} and {missing[-1]}"
    return (
        f"No tokenizer files in checkpoint {str(root)!r}, and the local Hugging Face cache entry of the backbone "
        f"{model_name!r} ({folder}) is incomplete: it lacks {names}, and the Hub was not asked or could not supply "
        f"them. Fill it with `hf download {model_name}` (online), or copy those files of {model_name} into the "
        f"checkpoint folder."
    )


def refuse_non_utf8_path(path: Union[str, Path], what: str) -> None:
    """ValueError naming `path` (`what`: 'the tokenizer folder') and the folder in it whose name on disk is not UTF-8
    (a Latin-1 byte from an old tool, or any non-ASCII name under a Latin-1 locale): the tokenizers library opens UTF-8
    paths only, so it found no file there ('No such file', read as a damaged tokenizer) or failed with a codec error."""
    problem = non_utf8_path_problem(path, what, "the tokenizers library")
    if problem is not None:
        raise ValueError(problem)


def load_tokenizer(folder: Union[str, Path]) -> Any:
    """AutoTokenizer from local files only, with left padding and the chat template attached."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    refuse_non_utf8_path(folder, "the tokenizer folder")
    _refuse_broken_links(folder)
    # Without it AutoTokenizer falls back to the folder's config.json (GR00T's, or none) and blames the model type.
    if not (folder / "tokenizer_config.json").is_file():
        raise TokenizerNotFoundError(
            f"tokenizer_config.json is missing from the tokenizer folder {folder}; it must hold the backbone's "
            f"tokenizer_config.json beside tokenizer.json (copy both, and the chat template, from the backbone)"
        )
    _refuse_missing_vocabulary(folder)
    _refuse_unreadable_files(folder)
    _refuse_merges_not_fitting_vocabulary(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ImportError):
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # tokenizers raises a bare Exception for a broken tokenizer.json
        read = "tokenizer.json" if (folder / "tokenizer.json").is_file() else "vocab.json, merges.txt"
        files = (folder / "tokenizer.json" if type(exc) is Exception and (folder / "tokenizer.json").is_file()
                 else f"the tokenizer files in {folder} ({read}, tokenizer_config.json)")
        raise ValueError(f"{files} could not be read: {reason}; copy them again from the backbone") from None
    tokenizer.padding_side = "left"
    tokenizer.chat_template = processor_chat_template(folder, getattr(tokenizer, "chat_template", None))
    check_chat_template(tokenizer, chat_template_source(folder))
    if tokenizer.pad_token is None:
        for candidate in ("<|endoftext|>", tokenizer.eos_token):
            if candidate is not None and tokenizer.convert_tokens_to_ids(candidate) is not None:
                tokenizer.pad_token = candidate
                break
    return tokenizer


def processor_chat_template(folder: Union[str, Path], tokenizer_template: Any) -> Optional[str]:
    """The template Qwen3VLProcessor.from_pretrained (transformers 4.57) renders with: chat_template.json, else
    chat_template.jinja, else the tokenizer's own; of named templates, the one named "default"."""
    template = read_chat_template(folder)
    if template is None:
        template = tokenizer_template
    return default_chat_template(template, f"the tokenizer folder {folder}")


def chat_template_source(folder: Union[str, Path]) -> Path:
    """The file processor_chat_template reads the template from (tokenizer_config.json: the tokenizer's own)."""
    folder = Path(folder)
    for name in ("chat_template.json", "chat_template.jinja"):
        if (folder / name).is_file():
            return folder / name
    return folder / "tokenizer_config.json"


def read_chat_template(folder: Union[str, Path]) -> Union[str, Dict[str, str], None]:
    """The processor's chat template(s) in `folder`: chat_template.json's, else chat_template.jinja (as "default")
    and additional_chat_templates/<name>.jinja as a dict by name; None when there is no such file."""
    folder = Path(folder)
    named_files = sorted((folder / CHAT_TEMPLATE_DIR).glob("*.jinja"))
    named = {path.stem: _read_text(path) for path in named_files}
    as_json = folder / "chat_template.json"
    if as_json.is_file():
        if named:
            raise ValueError(f"the tokenizer folder {folder} holds both chat_template.json and {CHAT_TEMPLATE_DIR}/, "
                             f"which transformers refuses to combine; replace chat_template.json by chat_template.jinja")
        data = _read_json(as_json)
        if not isinstance(data, dict):
            raise ValueError(f"{as_json} holds {type(data).__name__}; expected an object with a 'chat_template' string")
        return data.get("chat_template")
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        named["default"] = _read_text(jinja)
    return named or None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text: {exc}") from None


def _refuse_broken_links(folder: Path) -> None:
    """FileNotFoundError naming the target of any backbone file in `folder` that is a broken link: the optional ones
    (preprocessor_config.json, chat templates, vocab.json ...) read as absent and gave way to defaults silently."""
    for name in BACKBONE_FILE_PATTERNS:
        _refuse_broken_link(folder / name)
    for path in sorted((folder / CHAT_TEMPLATE_DIR).glob("*.jinja")):
        _refuse_broken_link(path)


def _refuse_missing_vocabulary(folder: Path) -> None:
    """TokenizerNotFoundError naming the missing files when `folder` has neither tokenizer.json nor vocab.json and
    merges.txt to build it from: transformers failed with "expected str, bytes or os.PathLike object, not NoneType"."""
    if (folder / "tokenizer.json").is_file():
        return
    for name in ("vocab.json", "merges.txt"):
        _refuse_broken_link(folder / name)
    missing = [name for name in ("vocab.json", "merges.txt") if not (folder / name).is_file()]
    if missing:
        raise TokenizerNotFoundError(
            f"tokenizer.json is missing from the tokenizer folder {folder}, and so is {' and '.join(missing)}, from "
            f"which it could be rebuilt; copy the backbone's tokenizer.json (or its vocab.json and merges.txt) into it"
        )


def _refuse_unreadable_files(folder: Path) -> None:
    """ValueError naming the file for a git-lfs pointer, broken JSON or a non-UTF-8 chat template, before transformers
    reads them and reports a parse position in no named file."""
    for name in BACKBONE_FILE_PATTERNS:
        pointer = git_lfs_pointer_problem(folder / name) if (folder / name).is_file() else None
        if pointer:
            raise ValueError(pointer)
    rebuilt_from = () if (folder / "tokenizer.json").is_file() else ("vocab.json",)
    for name in (*_SMALL_JSON_FILES, *rebuilt_from):  # tokenizer.json (megabytes) is left to the tokenizers parser
        if (folder / name).is_file():
            _read_json(folder / name)
    read_chat_template(folder)


def _refuse_merges_not_fitting_vocabulary(folder: Path) -> None:
    """ValueError naming merges.txt when tokenizer.json is absent and merges.txt is empty or does not fit vocab.json:
    transformers rebuilt the tokenizer from what was left, which split the instruction into other tokens."""
    if (folder / "tokenizer.json").is_file():
        return
    vocabulary = _read_json(folder / "vocab.json")
    if not isinstance(vocabulary, dict):
        raise ValueError(f"{folder / 'vocab.json'} holds {type(vocabulary).__name__}; expected an object of token: id")
    path = folder / "merges.txt"
    lines = _read_text(path).splitlines()
    # As transformers reads it: an optional "#version" header, then one merge per non-blank line.
    merges = [line for index, line in enumerate(lines)
              if line.strip() and not (index == 0 and line.strip().startswith("#version"))]
    added = _added_token_names(folder)
    # Byte-level BPE (Qwen's, the test checkpoint's) starts from the 256 byte symbols and each merge adds one token;
    # added tokens are listed apart (added_tokens.json, tokenizer_config.json), and some tokenizers repeat them in
    # vocab.json. So vocab.json less the added tokens holds 256 + merges (Qwen3-VL: 151643 = 256 + 151387 merges).
    # Special-looking tokens ("<|endoftext|>") some vocabularies hold unlisted are let through: only a merges.txt
    # short of what the rest of the vocabulary needs (cut short) is refused, never one with more merges.
    learned = sum(1 for token in vocabulary if token not in added)
    unlisted_specials = sum(1 for token in vocabulary if token not in added and _SPECIAL_LOOKING.fullmatch(token))
    if not merges or len(merges) < learned - 256 - unlisted_specials:
        raise ValueError(
            f"{path} holds {len(merges)} merges, but vocab.json's {learned} tokens (added tokens aside) need "
            f"{learned - 256} (256 byte symbols + one token per merge): merges.txt is empty, cut short or from another "
            f"tokenizer; download it (or the backbone's tokenizer.json) again"
        )


_SPECIAL_LOOKING = re.compile(r"<\|?[^<>\s]+\|?>")


def _added_token_names(folder: Path) -> set:
    """Tokens added beside the BPE vocabulary: added_tokens.json's, and tokenizer_config.json's added_tokens_decoder."""
    names = set()
    if (folder / "added_tokens.json").is_file():
        added = _read_json(folder / "added_tokens.json")
        names.update(added if isinstance(added, dict) else ())
    config = _read_json(folder / "tokenizer_config.json")
    decoder = config.get("added_tokens_decoder") if isinstance(config, dict) else None
    for token in (decoder.values() if isinstance(decoder, dict) else ()):
        if isinstance(token, dict) and isinstance(token.get("content"), str):
            names.add(token["content"])
    return names


def load_vision_config(folder: Union[str, Path]) -> VisionPatchConfig:
    """preprocessor_config.json in `folder`, else the Qwen3-VL defaults (patch 16, merge 2, temporal 2): only a
    checkpoint's own tokenizer folder may lack it, resolve_tokenizer_dir takes no backbone folder without it."""
    path = Path(folder) / PREPROCESSOR_CONFIG_NAME
    _refuse_broken_link(path)
    if path.is_file():
        return VisionPatchConfig.from_file(path)
    logger.info("no %s in %s; using Qwen3-VL image-processor defaults", PREPROCESSOR_CONFIG_NAME, folder)
    return VisionPatchConfig()


def load_backbone_text_assets(
    checkpoint_dir: Union[str, Path], model_name: str, local_files_only: bool = False
) -> Tuple[Any, VisionPatchConfig]:
    """(tokenizer, image-processor settings) for a checkpoint."""
    folder = resolve_tokenizer_dir(checkpoint_dir, model_name, local_files_only=local_files_only)
    return load_tokenizer(folder), load_vision_config(folder)
