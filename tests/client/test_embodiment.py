"""EmbodimentTag: the N1.7 tags, resolve(), and the tag -> projector index table (model.md §4)."""

import pytest

from gr00t_client import EMBODIMENT_TAG_TO_PROJECTOR_INDEX, EmbodimentTag
from gr00t_client.embodiment import FINETUNE_ONLY_TAGS, POSTTRAIN_TAGS, PRETRAIN_TAGS

N17_TAGS = {
    "OXE_DROID_RELATIVE_EEF_RELATIVE_JOINT": "oxe_droid_relative_eef_relative_joint",
    "XDOF": "xdof_relative_eef_relative_joint",
    "XDOF_SUBTASK": "xdof_relative_eef_relative_joint_subtask",
    "REAL_G1": "real_g1_relative_eef_relative_joints",
    "REAL_R1_PRO_SHARPA": "real_r1_pro_sharpa_relative_eef",
    "REAL_R1_PRO_SHARPA_HUMAN": "real_r1_pro_sharpa_relative_eef_human",
    "REAL_R1_PRO_SHARPA_MAXINSIGHTS": "real_r1_pro_sharpa_relative_eef_maxinsights",
    "REAL_R1_PRO_SHARPA_MECKA": "real_r1_pro_sharpa_relative_eef_mecka",
    "UNITREE_G1": "unitree_g1_full_body_with_waist_height_nav_cmd",
    "UNITREE_G1_SONIC": "unitree_g1_sonic",
    "SIMPLER_ENV_GOOGLE": "simpler_env_google",
    "SIMPLER_ENV_WIDOWX": "simpler_env_widowx",
    "LIBERO_PANDA": "libero_sim",
    "NEW_EMBODIMENT": "new_embodiment",
    "ROBOCASA_GR1_TABLETOP": "robocasa_gr1_tabletop",
    "ROBOCASA_PANDA_OMRON": "robocasa_panda_omron",
}


def test_enum_has_exactly_the_n17_tags_with_their_values():
    assert {member.name: member.value for member in EmbodimentTag} == N17_TAGS


@pytest.mark.parametrize("name,value", sorted(N17_TAGS.items()))
def test_resolve_accepts_enum_name_and_value_in_any_case(name, value):
    member = EmbodimentTag[name]
    assert EmbodimentTag.resolve(member) is member
    for text in (name, name.lower(), value, value.upper(), f"  {value}  "):
        assert EmbodimentTag.resolve(text) is member


def test_unknown_tag_raises_value_error_listing_every_known_tag():
    with pytest.raises(ValueError) as excinfo:
        EmbodimentTag.resolve("gr1_humanoid")
    message = str(excinfo.value)
    assert message.startswith("Unknown embodiment tag: 'gr1_humanoid'")
    for name, value in N17_TAGS.items():
        assert name in message and value in message
    for header in ("Base model tags", "Posttrain tags", "Finetuning-only tags"):
        assert header in message


def test_non_string_tag_raises_value_error():
    with pytest.raises(ValueError, match="Unknown embodiment tag"):
        EmbodimentTag.resolve(3)  # type: ignore[arg-type]


def test_reverse_lookup_gives_the_name_or_the_value_unchanged():
    assert EmbodimentTag.reverse_lookup("libero_sim") == "LIBERO_PANDA"
    assert EmbodimentTag.reverse_lookup("not_a_tag") == "not_a_tag"


def test_tag_categories_partition_the_enum():
    assert len(PRETRAIN_TAGS) == 8 and len(POSTTRAIN_TAGS) == 5 and len(FINETUNE_ONLY_TAGS) == 3
    assert PRETRAIN_TAGS | POSTTRAIN_TAGS | FINETUNE_ONLY_TAGS == set(EmbodimentTag)


def test_every_tag_has_a_projector_index_within_the_32_embodiment_slots():
    assert set(EMBODIMENT_TAG_TO_PROJECTOR_INDEX) == set(N17_TAGS.values())
    assert all(0 <= index < 32 for index in EMBODIMENT_TAG_TO_PROJECTOR_INDEX.values())


@pytest.mark.parametrize(
    "value,index",
    [
        ("simpler_env_google", 0),
        ("simpler_env_widowx", 1),
        ("libero_sim", 2),
        ("new_embodiment", 10),
        ("robocasa_gr1_tabletop", 10),
        ("unitree_g1_sonic", 11),
        ("oxe_droid_relative_eef_relative_joint", 24),
        ("unitree_g1_full_body_with_waist_height_nav_cmd", 25),
        ("real_r1_pro_sharpa_relative_eef_mecka", 26),
        ("xdof_relative_eef_relative_joint_subtask", 27),
    ],
)
def test_projector_index_matches_the_reference_table(value, index):
    assert EMBODIMENT_TAG_TO_PROJECTOR_INDEX[value] == index


def test_a_built_in_tags_spellings_name_it_and_a_checkpoints_own_tag_only_itself():
    from gr00t_client.embodiment import names_tag

    assert names_tag("libero_sim", "LIBERO_PANDA") and names_tag("LIBERO_PANDA", "libero_sim")
    assert names_tag("my_robot", "my_robot") and names_tag("MY_ROBOT", "my_robot")
    # a checkpoint's custom tag spelled like a built-in's name in lower case is not that built-in
    assert not names_tag("libero_sim", "libero_panda")
    assert not names_tag("unitree_g1_full_body_with_waist_height_nav_cmd", "unitree_g1")
    assert not names_tag("libero_sim", "unitree_g1")


@pytest.mark.parametrize("given", ["new_embodiment", "NEW_EMBODIMENT", "New_Embodiment", EmbodimentTag.NEW_EMBODIMENT])
def test_a_built_in_tag_a_checkpoint_spells_in_another_case_resolves_to_the_checkpoints_spelling(given):
    from gr00t_client.embodiment import resolve_tag

    assert resolve_tag(given, ["New_Embodiment", "libero_sim"])[1] == "New_Embodiment"
    assert resolve_tag(given, ["new_embodiment"])[1] == "new_embodiment"
