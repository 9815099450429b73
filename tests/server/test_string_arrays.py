"""Numpy str and bytes arrays in an observation are held to the language limits on every entry, not only the first
few hundred, and at a cost linear in their bytes. Real ZeroMQ sockets on loopback."""

from __future__ import annotations

import numpy as np
import pytest
from reference_peer import EchoPolicy, raw_round_trip
from serving import running_server

from gr00t_client import codec
from gr00t_server.serving.limits import ServerLimits, check_observation
from gr00t_server.serving.messages import RequestError


def message(observation):
    return codec.encode({"endpoint": "get_action", "data": {"observation": observation, "options": None}})


def reply_of(frames):
    assert frames is not None, "no reply"
    return codec.decode_multipart(frames) if codec.is_multipart(frames) else codec.decode(frames[-1])


def with_text_at(count: int, index: int, text, dtype: str) -> np.ndarray:
    """One row of `count` short entries, entry `index` replaced by `text`."""
    short = "go" if dtype.startswith("U") else b"go"
    values = [short] * count
    values[index] = text
    return np.array(values, dtype=dtype).reshape(1, count)


@pytest.mark.parametrize("dtype", ["U3000", "S3000"])
def test_a_long_entry_after_the_first_few_hundred_is_refused(dtype):
    long_text = "pick up the bowl " * 150  # 2550 characters, over the 2048 default
    text = long_text if dtype.startswith("U") else long_text.encode()
    observation = {"state": {"x": np.zeros((1, 1, 3), np.float32)}, "language": {"task": with_text_at(2000, 1999, text, dtype)}}
    policy = EchoPolicy()
    with running_server(policy) as server:
        reply = reply_of(raw_round_trip(server.port, message(observation)))
    assert reply["error"] == (
        "language 'language.task' in row 0, item 1999 has 2550 characters; this server accepts at most 2048 "
        "(--max-language-chars)"
    )
    assert policy.calls == 0


def test_an_entry_over_the_token_limit_is_refused_wherever_it_sits():
    many_words = "a " * 600  # 1200 characters (under 2048) but 600 words (over 512)
    value = with_text_at(1000, 777, many_words, "U1200")
    with pytest.raises(RequestError, match=r"has 600 words and punctuation marks; this server accepts at most 512"):
        check_observation({"language": {"task": value}}, ServerLimits())


def test_bytes_entries_are_measured_in_characters_not_bytes():
    text = ("é" * 1500).encode()  # 3000 bytes, 1500 characters: within the 2048-character limit
    value = np.array([b"go"] * 999 + [text], dtype="S3000").reshape(1, 1000)
    check_observation({"language": {"task": value}}, ServerLimits())


def test_many_short_entries_pass_and_the_policy_sees_them_all():
    value = np.array(["pick up the bowl"] * 5000).reshape(1, 5000)
    observation = {"state": {"x": np.zeros((1, 1, 3), np.float32)}, "task_names": value}
    policy = EchoPolicy()
    with running_server(policy) as server:
        reply = reply_of(raw_round_trip(server.port, message(observation)))
    assert "error" not in reply, reply
    assert policy.calls == 1


def test_row_limit_still_applies_to_string_arrays():
    value = np.array(["go"] * 200)
    with pytest.raises(RequestError, match=r"has 200 rows; this server accepts at most 128 rows"):
        check_observation({"language": {"task": value}}, ServerLimits())


def test_a_long_string_array_under_a_state_key_is_refused_as_text_not_as_language():
    observation = {"state": {"joints": np.array([["x" * 3000]], dtype="U3000")}}
    policy = EchoPolicy()
    with running_server(policy) as server:
        reply = reply_of(raw_round_trip(server.port, message(observation)))
    assert reply["error"] == (
        "text 'state.joints' in row 0, item 0 has 3000 characters; this server accepts at most 2048 (--max-language-chars)"
    )
    assert policy.calls == 0
