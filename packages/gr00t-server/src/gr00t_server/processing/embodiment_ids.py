"""Read a checkpoint's embodiment_id.json: embodiment tag -> projector index, merged with the built-in table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

from gr00t_client.embodiment import EMBODIMENT_TAG_TO_PROJECTOR_INDEX, EmbodimentTag

from .checkpoint_files import (
    EMBODIMENT_ID_NAME, PROCESSOR_SUBFOLDER, PathLike, _is_int, _read_json, _refuse_broken_link, find_processor_dir,
)

logger = logging.getLogger("gr00t_server.processing.config")  # one logger for the processor files' warnings


def merge_embodiment_ids(from_checkpoint: Optional[Mapping[str, int]], checkpoint_tags: Sequence[str] = ()) -> Dict[str, int]:
    """Checkpoint ids plus built-in ids for tags the checkpoint does not list (never overriding it); ValueError
    for an id that is not an int >= 0 (2.7 or true would pick another embodiment's projector), and for a key that
    names one of `checkpoint_tags` (the tags served) otherwise than by its value (its enum name, another case) when
    the key spelt as the value is absent or holds another id: the lookup is by the value, so the built-in id (or the
    other key's) was used silently. Such a key for a tag not served (a training run's whole table, older tag names)
    is never read, and said so in a warning."""
    merged: Dict[str, int] = {}
    for tag, index in (from_checkpoint or {}).items():
        if not (_is_int(index) and index >= 0):
            raise ValueError(f"embodiment {str(tag)!r} has id {json.dumps(index)} ({type(index).__name__}); expected an int >= 0")
        merged[str(tag)] = index
    served = set(checkpoint_tags)
    unread = []
    for tag, index in merged.items():
        try:
            builtin = EmbodimentTag.resolve(tag).value
        except ValueError:
            continue  # a custom tag: kept as written
        if tag == builtin or tag in served:
            continue
        if builtin in served and merged.get(builtin) != index:
            found = f"the key {builtin!r} holds {merged[builtin]}" if builtin in merged else f"no key {builtin!r}"
            raise ValueError(f"key {tag!r} (id {index}) names the served embodiment tag {builtin!r} but is never read: "
                             f"the projector index is looked up by the tag's value, and {found}; expected the key "
                             f"{builtin!r}")
        unread.append(f"{tag!r} ({builtin!r})")
    if unread:
        logger.warning("embodiment_id.json keys %s name built-in tags otherwise than by their values and are not read "
                       "(the lookup is by a tag's value); the checkpoint serves %s", ", ".join(unread),
                       sorted(served) or "no tag of them")
    for tag, index in EMBODIMENT_TAG_TO_PROJECTOR_INDEX.items():
        merged.setdefault(tag, index)
    return merged


def embodiment_id_path(checkpoint_dir: PathLike) -> Path:
    """The embodiment_id.json the processor reads: the one next to processor_config.json, as in the reference (one
    elsewhere in the checkpoint is never read)."""
    return find_processor_dir(checkpoint_dir) / EMBODIMENT_ID_NAME


def load_embodiment_ids(checkpoint_dir: PathLike, checkpoint_tags: Sequence[str] = (),
                        served_tag: Optional[str] = None) -> Dict[str, int]:
    """Read embodiment_id.json (optional) next to processor_config.json, merged with the built-in table (keys among
    `checkpoint_tags`, the processor config's tags, are read as written). One in the other place (the root or
    processor/) is never read: ValueError when it gives `served_tag` another index than the one used."""
    path = embodiment_id_path(checkpoint_dir)
    _refuse_broken_link(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; expected a JSON file")
    data = _read_json(path) if path.is_file() else None
    if data is not None and not isinstance(data, Mapping):
        raise ValueError(f"{path} must hold a JSON object {{tag: id}}")
    try:
        merged = merge_embodiment_ids(data, checkpoint_tags)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    root = Path(checkpoint_dir)
    unread = root / PROCESSOR_SUBFOLDER / EMBODIMENT_ID_NAME if path.parent == root else root / EMBODIMENT_ID_NAME
    _check_unread_embodiment_ids(unread, path, data, merged, served_tag)
    return merged


def _check_unread_embodiment_ids(unread: Path, path: Path, data: Optional[Mapping], merged: Mapping[str, int],
                                 served_tag: Optional[str]) -> None:
    """An embodiment_id.json where the reference does not read it (a run's processor/ copy beside processor files in
    the root, or the reverse) is refused when it gives the served tag another index than `path`'s (or the built-in
    one) that is used: another embodiment's projector served plausible actions. Named in a warning when it differs
    otherwise; a copy of the file read says nothing."""
    if not unread.is_file():
        return
    try:
        other = _read_json(unread)
    except ValueError as exc:
        logger.warning("%s is not read (embodiment_id.json is read only next to processor_config.json, as %s); it is "
                       "not valid JSON either: %s", unread, path, exc)
        return
    if other == data:
        return
    used = merged.get(served_tag) if served_tag is not None else None
    gives = (f"gives index {used}" if served_tag in (data or {}) else
             f"{'has no entry for it' if path.is_file() else 'is absent'}, so "
             + ("it has no index" if used is None else f"the built-in index {used} is used"))
    where = (f"{path} (read: embodiment_id.json is read only next to processor_config.json, as the reference does) "
             f"{gives}")
    if isinstance(other, Mapping) and served_tag in other and other[served_tag] != used:
        raise ValueError(f"{unread} gives the served embodiment {served_tag!r} projector index "
                         f"{json.dumps(other[served_tag])}, but {where}; keep one embodiment_id.json: move the run's "
                         f"mapping to {path} and delete the other")
    logger.warning("%s is not read: embodiment_id.json is read only next to processor_config.json, as %s (the "
                   "reference's rule)%s; keep one file", unread, path,
                   "" if path.is_file() else ", and the built-in projector indices are used")
