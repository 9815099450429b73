"""The prompt rows a processor tokenized lately, so that a request repeating an instruction and frame size (every
step of a rollout) is not tokenized again; batches are left-padded from them as the tokenizer pads."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

TOKEN_CACHE_SIZE = 64  # rows kept (their prompts are short; their token arrays a few KB each)


def _vocabulary_state(tokenizer: Any) -> tuple:
    """What an in-place change of `tokenizer` changes (add_tokens, add_special_tokens, a new pad token): its added
    tokens (a word added that the vocabulary already held changes no size but its tokenizing), pad id and special ids;
    ~10 us (len(tokenizer) alone costs 80). A normalizer or pre-tokenizer swapped inside it is not seen."""
    added = getattr(tokenizer, "added_tokens_decoder", None)
    return (len(added) if added is not None else None, getattr(tokenizer, "pad_token_id", None),
            tuple(getattr(tokenizer, "all_special_ids", ()) or ()))


class TokenCache:
    """Unpadded (input_ids, attention_mask) of prompt rows, keyed by (prompt, image token counts): the exact text the
    tokenizer got. Bounded (the oldest row goes first); tied to one tokenizer object and its vocabulary (tokens added
    to it in place empty the cache). Not thread-safe: callers hold their tokenizer lock."""

    def __init__(self, size: int = TOKEN_CACHE_SIZE) -> None:
        self.size = size
        self._rows: Dict[tuple, Tuple[np.ndarray, np.ndarray]] = {}
        self._tokenizer: Any = None

    def batch(self, keys: Sequence[tuple], tokenizer: Any) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """int64 (input_ids, attention_mask) of these rows left-padded to the longest as `tokenizer` pads them (its
        pad_token_id, mask 0); None when a row is not kept, or padding is needed and the tokenizer has no pad token
        (its own call then says so). Another tokenizer than the rows were kept for, or the same one with tokens added or
        another pad token, empties the cache."""
        state = (tokenizer, _vocabulary_state(tokenizer))
        if state != self._tokenizer:  # another tokenizer, or tokens added to this one in place
            self._rows.clear()
            self._tokenizer = state
            return None
        rows = [self._rows.get(key) for key in keys]
        if not rows or any(row is None for row in rows):
            return None
        longest = max(len(ids) for ids, _ in rows)
        pad_id = getattr(tokenizer, "pad_token_id", None)
        if pad_id is None and any(len(ids) != longest for ids, _ in rows):
            return None
        input_ids = np.full((len(rows), longest), 0 if pad_id is None else pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), longest), dtype=np.int64)
        for index, (ids, mask) in enumerate(rows):
            input_ids[index, longest - len(ids):] = ids
            attention_mask[index, longest - len(ids):] = mask
        return input_ids, attention_mask

    def keep(self, keys: Sequence[tuple], input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
        """Keep each row of a left-padded batch `tokenizer` (the one `batch` was last asked with) made, unpadded."""
        for key, ids, mask in zip(keys, input_ids, attention_mask):
            if key in self._rows:
                continue
            start = int(np.argmax(mask != 0)) if mask.any() else len(mask)  # the left padding ends here
            if not mask[start:].all():  # not padded as expected: not kept, so always tokenized
                continue
            if len(self._rows) >= self.size:
                del self._rows[next(iter(self._rows))]
            self._rows[key] = (ids[start:].copy(), mask[start:].copy())
