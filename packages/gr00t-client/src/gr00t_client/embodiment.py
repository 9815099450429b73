"""GR00T N1.7 embodiment tags and the tag -> projector (embodiment id) table."""

from __future__ import annotations

from enum import Enum
from typing import Dict, Sequence, Tuple, Union


class EmbodimentTag(Enum):
    """A robot embodiment known to GR00T N1.7; the value is the string used in checkpoints."""

    # Pretrain (base model) tags.
    OXE_DROID_RELATIVE_EEF_RELATIVE_JOINT = "oxe_droid_relative_eef_relative_joint"
    XDOF = "xdof_relative_eef_relative_joint"
    XDOF_SUBTASK = "xdof_relative_eef_relative_joint_subtask"
    REAL_G1 = "real_g1_relative_eef_relative_joints"
    REAL_R1_PRO_SHARPA = "real_r1_pro_sharpa_relative_eef"
    REAL_R1_PRO_SHARPA_HUMAN = "real_r1_pro_sharpa_relative_eef_human"
    REAL_R1_PRO_SHARPA_MAXINSIGHTS = "real_r1_pro_sharpa_relative_eef_maxinsights"
    REAL_R1_PRO_SHARPA_MECKA = "real_r1_pro_sharpa_relative_eef_mecka"
    # Posttrain tags (need a finetuned checkpoint).
    UNITREE_G1 = "unitree_g1_full_body_with_waist_height_nav_cmd"
    UNITREE_G1_SONIC = "unitree_g1_sonic"
    SIMPLER_ENV_GOOGLE = "simpler_env_google"
    SIMPLER_ENV_WIDOWX = "simpler_env_widowx"
    LIBERO_PANDA = "libero_sim"
    # Finetune-only tags (custom robots).
    NEW_EMBODIMENT = "new_embodiment"
    ROBOCASA_GR1_TABLETOP = "robocasa_gr1_tabletop"
    ROBOCASA_PANDA_OMRON = "robocasa_panda_omron"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def resolve(cls, tag: Union["EmbodimentTag", str]) -> "EmbodimentTag":
        """Return the tag for an enum member, its name or its value (case-insensitive, names first)."""
        if isinstance(tag, cls):
            return tag
        if not isinstance(tag, str):
            raise ValueError(f"Unknown embodiment tag: {tag!r} (expected a str or EmbodimentTag)\n{_known_tags_text()}")
        text = tag.strip()
        lowered = text.lower()
        for member in cls:
            if member.name.lower() == lowered:
                return member
        for member in cls:
            if member.value.lower() == lowered:
                return member
        raise ValueError(f"Unknown embodiment tag: {text!r}\n{_known_tags_text()}")

    @classmethod
    def reverse_lookup(cls, value: str) -> str:
        """Return the enum name for a tag value, or the value unchanged when no member has it."""
        for member in cls:
            if member.value == value:
                return member.name
        return value


def resolve_tag(tag: Union[EmbodimentTag, str], supported: Sequence[str],
                owner: str = "this checkpoint") -> Tuple[Union[EmbodimentTag, str], str]:
    """(tag object for messages, tag value) for a tag as given against the tags `owner` has (`supported`): one of
    them exactly, else a built-in tag by any spelling (one of them when it spells that tag's value in another case;
    ValueError when several do), else one of them by case when the spelling names only one."""
    if isinstance(tag, str) and tag.strip() in supported:
        try:
            return EmbodimentTag.resolve(tag), tag.strip()
        except ValueError:
            return tag.strip(), tag.strip()
    try:
        resolved = EmbodimentTag.resolve(tag)
    except ValueError as exc:
        folded = [value for value in supported if isinstance(tag, str) and value.casefold() == tag.strip().casefold()]
        if len(folded) == 1:
            return folded[0], folded[0]
        raise ValueError(f"{str(exc).splitlines()[0]}; it is neither a built-in tag nor one of {owner}'s tags "
                         f"{sorted(supported)}" + (" (give one exactly: they differ only in case)" if folded else "")) from None
    if resolved.value not in supported:  # a checkpoint may spell a built-in tag in another case ("New_Embodiment")
        folded = [value for value in supported if value.casefold() == resolved.value.casefold()]
        if len(folded) == 1:
            return folded[0], folded[0]
        if folded:  # which of them is this server's tag cannot be told: each may map to another embodiment id
            raise ValueError(f"tag {tag.strip() if isinstance(tag, str) else resolved.value!r} is the built-in tag "
                             f"{resolved.value!r}, which {owner} spells {' and '.join(map(repr, sorted(folded)))}; "
                             "give one exactly: they differ only in case")
    return resolved, resolved.value



def names_tag(given: Union[EmbodimentTag, str], tag: str) -> bool:
    """Whether `given` names embodiment `tag` by resolve_tag's rule (exactly, a built-in tag's spelling, or case), or
    `tag` is a built-in tag's exact value or name that `given` spells (a server that reports `LIBERO_PANDA` serves
    `libero_sim`)."""
    try:
        if resolve_tag(given, [tag])[1] == tag:
            return True
    except ValueError:
        pass
    builtin = next((member for member in EmbodimentTag if tag in (member.value, member.name)), None)
    if builtin is None:  # a checkpoint's own tag (even one spelled like a built-in's name) is named by itself only
        return False
    try:
        return EmbodimentTag.resolve(given) is builtin
    except ValueError:
        return False


PRETRAIN_TAGS = frozenset(
    {
        EmbodimentTag.OXE_DROID_RELATIVE_EEF_RELATIVE_JOINT,
        EmbodimentTag.XDOF,
        EmbodimentTag.XDOF_SUBTASK,
        EmbodimentTag.REAL_G1,
        EmbodimentTag.REAL_R1_PRO_SHARPA,
        EmbodimentTag.REAL_R1_PRO_SHARPA_HUMAN,
        EmbodimentTag.REAL_R1_PRO_SHARPA_MAXINSIGHTS,
        EmbodimentTag.REAL_R1_PRO_SHARPA_MECKA,
    }
)
POSTTRAIN_TAGS = frozenset(
    {
        EmbodimentTag.UNITREE_G1,
        EmbodimentTag.UNITREE_G1_SONIC,
        EmbodimentTag.SIMPLER_ENV_GOOGLE,
        EmbodimentTag.SIMPLER_ENV_WIDOWX,
        EmbodimentTag.LIBERO_PANDA,
    }
)
FINETUNE_ONLY_TAGS = frozenset(
    {EmbodimentTag.NEW_EMBODIMENT, EmbodimentTag.ROBOCASA_PANDA_OMRON, EmbodimentTag.ROBOCASA_GR1_TABLETOP}
)

# Index into dim 0 of the category-specific encoder/decoder weights (model.md §4.2).
EMBODIMENT_TAG_TO_PROJECTOR_INDEX: Dict[str, int] = {
    "simpler_env_google": 0,
    "simpler_env_widowx": 1,
    "libero_sim": 2,
    "new_embodiment": 10,
    "robocasa_panda_omron": 10,
    "robocasa_gr1_tabletop": 10,
    "unitree_g1_sonic": 11,
    "oxe_droid_relative_eef_relative_joint": 24,
    "real_g1_relative_eef_relative_joints": 25,
    "unitree_g1_full_body_with_waist_height_nav_cmd": 25,
    "real_r1_pro_sharpa_relative_eef": 26,
    "real_r1_pro_sharpa_relative_eef_human": 26,
    "real_r1_pro_sharpa_relative_eef_maxinsights": 26,
    "real_r1_pro_sharpa_relative_eef_mecka": 26,
    "xdof_relative_eef_relative_joint": 27,
    "xdof_relative_eef_relative_joint_subtask": 27,
}


def _known_tags_text() -> str:
    blocks = [
        ("Base model tags (work with nvidia/GR00T-N1.7-3B):", PRETRAIN_TAGS),
        ("Posttrain tags (require a finetuned checkpoint):", POSTTRAIN_TAGS),
        ("Finetuning-only tags (for custom robots):", FINETUNE_ONLY_TAGS),
    ]
    lines = []
    for title, tags in blocks:
        lines.append(f"  {title}")
        for member in EmbodimentTag:
            if member in tags:
                lines.append(f"    {member.name:40s} -> {member.value}")
    return "\n".join(lines)
