"""Flat-key language sent as a numpy string array: one string per row, (B,) or (B, 1). A (128, 100000) array passed
the server's language limits (its rows were few and each string short) and was turned into 12.8 million Python strings
before anything compared it with the batch: 25x its bytes in memory and seconds of the policy's thread, only to be
refused. It is refused from its shape now."""

from __future__ import annotations

import numpy as np
import pytest

from gr00t_client import ObservationError
from gr00t_client.flat import language_batch


def test_a_language_array_of_several_strings_a_row_is_refused_from_its_shape():
    many = np.full((128, 100000), "\u4e00", dtype="<U1")  # 48 MiB of one-character strings
    with pytest.raises(ObservationError, match=r"has shape \(128, 100000\): several strings in a row; expected one "
                                               r"string per row, \(B,\) or \(B, 1\)"):
        language_batch(many, "annotation.human.task_description")


@pytest.mark.parametrize("value", [np.array(["pick", "place"]), np.array([["pick"], ["place"]]), ("pick", "place"),
                                   ["pick", "place"]])
def test_one_string_a_row_is_read_in_every_form(value):
    assert language_batch(value, "task") == ["pick", "place"]


def test_a_bare_string_is_one_row():
    assert language_batch("pick", "task") == ["pick"]


def test_a_lone_surrogate_is_passed_on_to_the_policy_which_alone_knows_whether_a_tokenizer_reads_it():
    """A replay reads no language and a formalizing checkpoint strips it: the flat helpers (server, sim wrapper,
    rollout's language_row) refused every instruction holding one. (A rollout refuses it before sending, as no wire
    carries it: ObservationMapper.language_errors.)"""
    from gr00t_eval.rollout.policy_io import language_row

    text = "pick \ud800 up the bowl"
    assert language_batch(np.array([text]), "task") == [text]
    assert language_row(np.array([text]), "task") == text
    assert language_row(text, "task") == text
