"""ServerLimits' byte budget and idle time take numbers of their kind only (a NaN budget was no budget at all), and a
refused language text names its row: in a request of many envs, the one whose instruction is too long."""

import numpy as np
import pytest
from reference_peer import EchoPolicy, raw_round_trip
from test_server_faults import error_of, get_action_message, small_observation

from gr00t_server import ServerLimits
from serving import running_server


@pytest.mark.parametrize("value", [float("nan"), True, 2.5, "1", 0])
def test_a_per_connection_byte_budget_that_is_no_whole_number_of_bytes_is_refused_naming_it(value):
    """nan passed the `< 1` check and turned the budget off: every pipelined request was queued."""
    with pytest.raises(ValueError) as refused:
        ServerLimits(max_client_queued_bytes=value)
    assert str(refused.value) == f"max_client_queued_bytes must be >= 1 or None (an int: a number of bytes), got {value!r}"


@pytest.mark.parametrize("value", [True, "60", float("inf"), float("nan"), 0])
def test_a_session_idle_time_that_is_no_finite_number_of_seconds_is_refused_naming_it(value):
    with pytest.raises(ValueError) as refused:
        ServerLimits(session_idle_s=value)
    assert str(refused.value) == f"session_idle_s must be > 0 (a finite number of seconds), got {value!r}"


def test_numpy_numbers_are_taken_as_the_budget_and_idle_time():
    limits = ServerLimits(max_client_queued_bytes=np.int64(20000), session_idle_s=np.float32(1.5))
    assert (limits.max_client_queued_bytes, limits.session_idle_s) == (20000, 1.5)
    assert type(limits.max_client_queued_bytes) is int and type(limits.session_idle_s) is float


@pytest.mark.parametrize("unit, text, limit", [
    ("characters", "y" * 2049, "at most 2048 (--max-language-chars)"),
    ("words and punctuation marks", "x " * 600, "at most 512 (--max-language-tokens)"),
])
def test_a_language_text_over_a_limit_is_refused_naming_its_row(unit, text, limit):
    """Five envs' instructions, only row 3's too long: the refusal says which env's."""
    policy = EchoPolicy()
    language = [["pick up the cube"]] * 5
    language[3] = [text]
    observation = dict(small_observation(rows=5), language={"task": language})
    with running_server(policy) as server:
        message = error_of(raw_round_trip(server.port, get_action_message(observation)))
    count = len(text) if unit == "characters" else 600
    assert message == f"language 'language.task' in row 3, item 0 has {count} {unit}; this server accepts {limit}"
    assert policy.calls == 0


def test_a_language_array_entry_over_the_limit_is_refused_naming_its_row_and_item():
    policy = EchoPolicy()
    language = np.array([["pick up the cube", "go"]] * 4, dtype="U3000")
    language[2, 1] = "y" * 2049
    observation = dict(small_observation(rows=4), language={"task": language})
    with running_server(policy) as server:
        message = error_of(raw_round_trip(server.port, get_action_message(observation)))
    assert message == ("language 'language.task' in row 2, item 1 has 2049 characters; this server accepts at most 2048 "
                       "(--max-language-chars)")
    assert policy.calls == 0


WIRE_INT_MAX = 2**63 - 1  # what get_server_info may report of a limit
INT_LIMITS = ["max_rows", "max_language_chars", "max_language_tokens", "max_cameras", "max_image_pixels",
              "max_session_id_chars", "max_sessions", "max_client_queued_bytes", "max_client_queued_requests",
              "max_queued_requests", "max_queued_bytes"]


@pytest.mark.parametrize("name", INT_LIMITS)
def test_an_int_limit_past_the_wires_integer_range_is_refused_naming_it(name):
    """max_rows=2**64 (a "no limit") was taken; every get_server_info then failed to encode, and clients took the
    server for a reference server."""
    with pytest.raises(ValueError) as refused:
        ServerLimits(**{name: 2**64})
    assert str(refused.value) == (f"{name} must be at most {WIRE_INT_MAX} (2**63 - 1, the largest the wire carries: "
                                  f"get_server_info reports it), got {2**64}")


def test_limits_at_the_top_of_the_wires_range_are_reported_by_get_server_info():
    from gr00t_client import PolicyClient

    limits = ServerLimits(max_rows=WIRE_INT_MAX, max_queued_bytes=WIRE_INT_MAX, max_image_pixels=np.int64(WIRE_INT_MAX))
    with running_server(EchoPolicy(), limits=limits) as server:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
            reported = client.get_server_info()["limits"]
            assert client.server_is_gr00t_server
    assert (reported["max_rows"], reported["max_queued_bytes"], reported["max_image_pixels"]) == (WIRE_INT_MAX,) * 3


def test_serve_names_the_flag_of_a_limit_past_the_wires_integer_range():
    from gr00t_server.cli import CliError, _server_limits, build_parser

    args = build_parser().parse_args(["serve", "--dataset-path", "d", "--max-rows", str(2**64)])
    with pytest.raises(CliError) as refused:
        _server_limits(args)
    assert str(refused.value).startswith(f"--max-rows must be at most {WIRE_INT_MAX} (2**63 - 1")
