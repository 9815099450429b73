"""Work limits hold at exactly their documented values (a request at a limit is served, one past it refused), for
each kind of value on its own: arrays, lists, images, str arrays and undecodable language bytes."""

from __future__ import annotations

import numpy as np
import pytest
from reference_peer import EchoPolicy
from serving import running_server

from gr00t_client import PolicyClient, PolicyServerError
from gr00t_server.serving.limits import ServerLimits, all_finite_action, check_finite_action, check_observation
from gr00t_server.serving.messages import RequestError


def test_an_array_alone_is_refused_one_row_past_max_rows_and_served_at_it():
    """A state array of max_rows + 1 rows (no list beside it to trip the limit) is refused; max_rows rows are served."""
    policy = EchoPolicy()
    with running_server(policy, limits=ServerLimits(max_rows=4)) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            action, _ = client.get_action({"state": {"x": np.zeros((4, 1, 1), np.float32)}})
            assert all(value.shape[0] == 4 for value in action.values())
            with pytest.raises(PolicyServerError) as caught:
                client.get_action({"state": {"x": np.zeros((5, 1, 1), np.float32)}})
    assert "'state.x' has 5 rows; this server accepts at most 4 rows per request (--max-rows)" in caught.value.server_message
    assert policy.calls == 1


def test_a_language_list_alone_is_refused_one_entry_past_max_rows():
    """A language list of max_rows + 1 entries is refused even when every array is within the limit."""
    limits = ServerLimits(max_rows=4)
    check_observation({"language": {"task": [["go"]] * 4}}, limits)
    with pytest.raises(RequestError, match=r"'language.task' has 5 entries; this server accepts at most 4 rows"):
        check_observation({"state": {"x": np.zeros((1, 1, 1), np.float32)}, "language": {"task": [["go"]] * 5}}, limits)


def test_an_image_of_exactly_max_image_pixels_is_taken_and_one_pixel_more_is_refused():
    """--max-image-pixels is an inclusive bound: 7x9 and 9x7 pass a 63-pixel limit, 8x8 (64 pixels) does not."""
    limits = ServerLimits(max_image_pixels=63)
    for height, width in ((7, 9), (9, 7)):
        check_observation({"video": {"front": np.zeros((1, 1, height, width, 3), np.uint8)}}, limits)
    with pytest.raises(RequestError, match=r"'video.front' has 8x8 images; this server accepts at most 63 pixels"):
        check_observation({"video": {"front": np.zeros((1, 1, 8, 8, 3), np.uint8)}}, limits)


def test_a_str_array_entry_of_few_characters_but_many_tokens_is_counted_with_the_policys_tokenizer():
    """A str-array entry within max_language_tokens characters but over it in the policy's tokens (CJK, 3 bytes a
    character for a byte-level tokenizer) is refused, as the same text sent as a plain str is."""
    limits = ServerLimits(max_language_tokens=10)
    count_bytes = lambda text: len(text.encode("utf-8"))  # noqa: E731 - a byte-level tokenizer
    text = "漢" * 8  # 8 characters, 24 tokens
    with pytest.raises(RequestError, match="has 24 tokens"):
        check_observation({"language": {"task": [[text]]}}, limits, count_tokens=count_bytes)
    with pytest.raises(RequestError, match="has 24 tokens"):
        check_observation({"language": {"task": np.array([[text]])}}, limits, count_tokens=count_bytes)
    check_observation({"language": {"task": np.array([["go" * 5]])}}, limits, count_tokens=count_bytes)  # 10 tokens


def test_language_bytes_longer_than_four_bytes_a_character_are_refused_even_when_not_utf8():
    """Language bytes over 4 x max_language_chars cannot decode to within the limit, so they are refused undecoded;
    invalid UTF-8 (left to the policy below that) is no way around it."""
    limits = ServerLimits(max_language_chars=10, max_language_tokens=10)
    check_observation({"language": {"task": b"\xff" * 40}}, limits)  # 40 bytes: not UTF-8, left to the policy
    for size in (41, 60):
        with pytest.raises(RequestError, match=rf"has {size} bytes, more than 10 characters however they decode"):
            check_observation({"language": {"task": b"\xff" * size}}, limits)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_a_session_idle_time_that_is_not_positive_is_a_one_line_serve_error(value):
    """--session-idle-s 0, negative or nan is refused by name (a nan one would never evict an idle session)."""
    from gr00t_server.cli import CliError, _server_limits, build_parser

    with pytest.raises(ValueError, match="session_idle_s must be > 0"):
        ServerLimits(session_idle_s=value)
    args = build_parser().parse_args(["serve", "--dataset-path", "d", "--session-idle-s", str(value)])
    with pytest.raises(CliError, match="session-idle-s must be > 0"):
        _server_limits(args)


@pytest.mark.parametrize("value", [0, -1])
def test_a_per_connection_byte_budget_below_one_is_refused_not_taken_as_the_default(value):
    """ServerLimits(max_client_queued_bytes=0) is an error (0 read as 'unset' silently gave every connection 16 MiB)."""
    with pytest.raises(ValueError, match="max_client_queued_bytes must be >= 1 or None"):
        ServerLimits(max_client_queued_bytes=value)


def test_language_bytes_within_the_character_limit_are_still_held_to_the_token_limit():
    """Language sent as bytes (msgpack bin) is counted in words like a str: 11 words in 33 bytes pass a 100-character
    limit but not a 10-token one, through a real server."""
    policy = EchoPolicy()
    limits = ServerLimits(max_language_chars=100, max_language_tokens=10)
    with running_server(policy, limits=limits) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            with pytest.raises(PolicyServerError) as caught:
                client.get_action({"state": {"x": np.zeros((1, 1, 1), np.float32)}, "language": {"task": [[b"go " * 11]]}})
            client.get_action({"state": {"x": np.zeros((1, 1, 1), np.float32)}, "language": {"task": [[b"go " * 5]]}})
    assert "language 'language.task' in row 0, item 0 has 11 words and punctuation marks; this server accepts at most 10" in caught.value.server_message
    assert policy.calls == 1


def test_a_nan_action_with_more_rows_than_the_observation_is_still_refused_with_its_own_message():
    """The NaN guard names key and rows even when the observation's states have fewer rows than the action (a
    replay's empty observation, a 1-row state): looking for the cause must not fail the refusal with an IndexError."""
    action = {"arm": np.zeros((4, 2, 3), np.float32)}
    action["arm"][3, 1, 0] = np.nan
    observation = {"state": {"eef_9d": np.zeros((1, 1, 9), np.float32)}}
    with pytest.raises(RequestError, match=r"non-finite values \(NaN or inf\) in action key 'arm' rows \[3\]; the action was not sent"):
        check_finite_action(action, observation)


def test_a_merged_action_is_all_finite_only_when_no_number_in_it_is_nan_or_inf_nor_its_walk_refuses_it():
    """A merged call's action checked once stands for each request's rows; a NaN anywhere, or an action the walk
    refuses (a masked array), sends every request back to its own check, which words its refusal."""
    action = {"arm": np.zeros((4, 2, 3), np.float32), "info": [1.0, {"gain": 2.0}]}
    assert all_finite_action(action)
    action["info"][1]["gain"] = float("inf")
    assert not all_finite_action(action)
    assert not all_finite_action({"arm": np.ma.masked_array(np.zeros((2, 3), np.float32))})


@pytest.mark.parametrize("name", ["max_rows", "max_image_pixels"])
def test_numpy_ints_are_taken_as_limits_and_numpy_bools_are_not(name):
    """max_rows=np.int64(64) was refused as "must be an int >= 1" while max_denoising_steps took numpy ints."""
    assert type(getattr(ServerLimits(**{name: np.int64(64)}), name)) is int
    assert getattr(ServerLimits(**{name: np.int32(64)}), name) == 64
    with pytest.raises(ValueError, match=rf"{name} must be an int >= 1, got np.True_"):
        ServerLimits(**{name: np.bool_(True)})
