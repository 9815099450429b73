"""Faults the server audit found (docs/serving.md, docs/protocol.md §6): every request gets one reply, success or a
clear error, its queue slot is freed, and the server answers the next one. Real ZeroMQ sockets on loopback."""

from __future__ import annotations

import asyncio
import os
import logging
import threading
import time
from collections import OrderedDict
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import msgpack
import numpy as np
import pytest
import zmq
from reference_peer import LANGUAGE_KEY, EchoPolicy, libero_like_configs, raw_round_trip
from serving import running_server

from gr00t_client import BasePolicy, ModalityConfig, PolicyClient, PolicyServerError, codec
from gr00t_server.policies import Gr00tSimPolicyWrapper
from gr00t_server.serving.execution import JobRunner
from gr00t_server.serving.limits import ServerLimits, check_observation
from gr00t_server.serving.loop import RequestLoop
from gr00t_server.serving import messages
from gr00t_server.serving.messages import RequestError, refuse_unsendable_keys

ARRAY_REFERENCE_EXT = 42  # a multipart header's "array in frame N"


def small_observation(rows: int = 1, value: float = 0.0) -> Dict[str, Any]:
    return {"state": {"x": np.full((rows, 1, 3), value, np.float32)}}


def get_action_message(observation: Any, options: Any = None, **envelope: Any) -> bytes:
    return codec.encode({"endpoint": "get_action", "data": {"observation": observation, "options": options}, **envelope})


def decoded(frames: Optional[List[bytes]]) -> Any:
    assert frames is not None, "no reply"
    return codec.decode_multipart(frames) if codec.is_multipart(frames) else codec.decode(frames[-1])


def error_of(frames: Optional[List[bytes]]) -> str:
    reply = decoded(frames)
    assert isinstance(reply, dict) and "error" in reply, reply
    return reply["error"]


def in_threads(port: int, messages: Dict[str, Any], timeout_ms: int = 5000, stagger_s: float = 0.02) -> Dict[str, Any]:
    """Send each message from its own REQ socket at about the same time; name -> reply frames (None: no reply)."""
    replies: Dict[str, Any] = {}

    def send(name: str, message: Any) -> None:
        replies[name] = raw_round_trip(port, message, timeout_ms)

    threads = [threading.Thread(target=send, args=item) for item in messages.items()]
    for thread in threads:
        thread.start()
        time.sleep(stagger_s)
    for thread in threads:
        thread.join()
    return replies


class RaisingPolicy(BasePolicy):
    """Raises `error` from get_action when the observation's state is negative; otherwise a zero action."""

    supports_batching = True

    def __init__(self, error: BaseException) -> None:
        super().__init__(strict=False)
        self.error = error
        self.rows_per_call: List[int] = []

    def _get_action(self, observation, options=None):
        state = observation["state"]["x"]
        self.rows_per_call.append(state.shape[0])
        if (state < 0).any():
            raise self.error
        return {"a": np.zeros((state.shape[0], 4, 2), np.float32)}, {}

    def reset(self, options=None):
        return {}


class ReturningPolicy(BasePolicy):
    """Returns whatever `make(rows)` gives, as the policy's whole get_action result."""

    def __init__(self, make) -> None:
        super().__init__(strict=False)
        self.make = make

    def get_action(self, observation, options=None):  # overridden: the result is returned as it is
        return self.make(observation["state"]["x"].shape[0])

    def _get_action(self, observation, options=None):  # pragma: no cover - get_action is overridden
        raise AssertionError

    def reset(self, options=None):
        return {}


# --- #1 a return_server_timing option that is not a bool; a job whose execution fails --------------------------


def test_a_server_timing_option_that_is_not_a_bool_is_refused_naming_the_option_and_frees_its_queue_slot():
    hostile = get_action_message(small_observation(), {"return_server_timing": np.array([1, 2])})
    with running_server(EchoPolicy(), inline_below_ms=0) as server:
        message = error_of(raw_round_trip(server.port, hostile, 3000))
        assert server._loop.queued_requests == 0 and not server._loop.queued_bytes
        good = decoded(raw_round_trip(server.port, get_action_message(small_observation(), {"return_server_timing": True})))
    assert message == "options['return_server_timing'] must be true or false (a bool, or 0 or 1), got ndarray"
    assert "server_timing" in good[1]


@pytest.mark.parametrize(
    "flag, timed",
    [(1, True), (0, False), (np.int64(1), True), (np.bool_(True), True), (False, False), (None, False)],
    ids=["int 1", "int 0", "numpy int 1", "numpy bool", "false", "nil"],
)
def test_a_server_timing_option_sent_as_0_or_1_is_a_flag(flag, timed):
    with running_server(EchoPolicy()) as server:  # C++, JS and Go msgpack peers often send flags as 0/1
        request = get_action_message(small_observation(), {"return_server_timing": flag})
        action, info = decoded(raw_round_trip(server.port, request))
    assert ("server_timing" in info) is timed


@pytest.mark.parametrize("flag, shown", [(2, "int 2"), (1.0, "float 1.0"), ("true", "str 'true'"), ([1], "list")])
def test_a_server_timing_option_that_is_not_bool_like_is_refused_saying_what_it_got(flag, shown):
    with running_server(EchoPolicy()) as server:
        request = get_action_message(small_observation(), {"return_server_timing": flag})
        message = error_of(raw_round_trip(server.port, request))
    assert message == f"options['return_server_timing'] must be true or false (a bool, or 0 or 1), got {shown}"


def test_many_bad_timing_options_from_one_dealer_leave_the_queue_empty_for_the_next_client():
    hostile = get_action_message(small_observation(), {"return_server_timing": np.array([1, 2])})
    with running_server(EchoPolicy(), inline_below_ms=0) as server:
        context = zmq.Context.instance()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(f"tcp://127.0.0.1:{server.port}")
        try:
            for _ in range(200):
                dealer.send_multipart([b"", hostile])
            answered = 0
            while answered < 200 and dealer.poll(3000):
                dealer.recv_multipart()
                answered += 1
        finally:
            dealer.close(linger=0)
        assert answered == 200 and server._loop.queued_requests == 0
        action, _ = decoded(raw_round_trip(server.port, get_action_message(small_observation())))
    assert action["x"].shape == (1, 16, 1)


def test_a_client_batched_with_a_bad_timing_option_is_still_served():
    hostile = get_action_message(small_observation(), {"return_server_timing": np.array([1, 2])})
    innocent = get_action_message(small_observation())
    with running_server(RaisingPolicy(RuntimeError()), max_batch_size=8, batch_timeout_ms=300, inline_below_ms=0) as server:
        replies = in_threads(server.port, {"hostile": hostile, "innocent": innocent})
        assert server._loop.queued_requests == 0
    assert "return_server_timing" in error_of(replies["hostile"])
    assert decoded(replies["innocent"])[0]["a"].shape == (1, 4, 2)


def test_a_job_whose_execution_fails_answers_each_request_as_an_internal_error_and_frees_its_slot(monkeypatch):
    def broken(self, job, now, replies):
        raise RuntimeError("a bug outside any request's own handling")

    monkeypatch.setattr(JobRunner, "_execute", broken)
    with running_server(EchoPolicy(), inline_below_ms=0) as server:
        message = error_of(raw_round_trip(server.port, get_action_message(small_observation()), 3000))
        assert server._loop.queued_requests == 0
        assert decoded(raw_round_trip(server.port, codec.encode({"endpoint": "ping"})))["status"] == "ok"
    assert message == "internal error in get_action: RuntimeError"


def test_the_worker_answers_every_request_of_a_job_whose_execute_raised(monkeypatch):
    def broken(self, job):
        raise RuntimeError("execute itself failed")

    monkeypatch.setattr(JobRunner, "execute", broken)  # the worker's last line of defence
    with running_server(EchoPolicy(), max_batch_size=8, batch_timeout_ms=300, inline_below_ms=0) as server:
        replies = in_threads(server.port, {name: get_action_message(small_observation()) for name in ("a", "b")})
        assert server._loop.queued_requests == 0
    assert [error_of(replies[name]) for name in ("a", "b")] == ["internal error in get_action: RuntimeError"] * 2


# --- #2 a policy raising SystemExit, KeyboardInterrupt or CancelledError ------------------------------------------


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt(), asyncio.CancelledError()], ids=lambda e: type(e).__name__)
def test_a_policy_raising_a_base_exception_on_the_worker_is_answered_as_an_internal_error_and_serving_goes_on(error):
    with running_server(RaisingPolicy(error), inline_below_ms=0) as server:
        message = error_of(raw_round_trip(server.port, get_action_message(small_observation(value=-1.0)), 3000))
        assert server._loop.queued_requests == 0
        action, _ = decoded(raw_round_trip(server.port, get_action_message(small_observation())))
    assert message == f"internal error in get_action: {type(error).__name__}"
    assert action["a"].shape == (1, 4, 2)


@pytest.mark.parametrize("error", [SystemExit(1), KeyboardInterrupt(), asyncio.CancelledError()], ids=lambda e: type(e).__name__)
def test_a_base_exception_in_a_batched_call_fails_only_the_client_whose_input_raised_it(error):
    """As for a RuntimeError: the merged call's requests are served one by one, so a clean batch-mate gets its action."""
    messages = {"bad": get_action_message(small_observation(value=-1.0)), "good": get_action_message(small_observation())}
    policy = RaisingPolicy(error)
    with running_server(policy, max_batch_size=8, batch_timeout_ms=300, inline_below_ms=0) as server:
        replies = in_threads(server.port, messages)
        assert server._loop.queued_requests == 0
        policy_calls = server.stats.snapshot()["policy_calls"]
    assert policy.rows_per_call[0] == 2  # the two were merged into one call
    assert policy_calls == len(policy.rows_per_call)  # every call that ran counts, the failed ones too
    assert error_of(replies["bad"]) == f"internal error in get_action: {type(error).__name__}"
    assert decoded(replies["good"])[0]["a"].shape == (1, 4, 2)



class CheckRaisingPolicy(RaisingPolicy):
    """A strict policy whose own check_observation raises `error` for a negative state, as a user's may (sys.exit())."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.strict = True

    def check_observation(self, observation):
        if (observation["state"]["x"] < 0).any():
            raise self.error


@pytest.mark.parametrize("error", [SystemExit(1), KeyboardInterrupt(), asyncio.CancelledError()], ids=lambda e: type(e).__name__)
def test_a_base_exception_in_a_strict_policys_check_fails_only_its_sender_while_a_batch_forms(error):
    """Its batch-mates were all answered "internal error in get_action: SystemExit" with it."""
    messages = {"bad": get_action_message(small_observation(value=-1.0)),
                **{name: get_action_message(small_observation()) for name in ("good", "also good")}}
    policy = CheckRaisingPolicy(error)
    with running_server(policy, max_batch_size=8, batch_timeout_ms=300, inline_below_ms=0) as server:
        replies = in_threads(server.port, messages)
        after, _ = decoded(raw_round_trip(server.port, get_action_message(small_observation()), 3000))
    assert error_of(replies["bad"]) == f"internal error in get_action: {type(error).__name__}"
    good = [decoded(replies[name]) for name in ("good", "also good")]
    assert all(isinstance(reply, list) for reply in good), good  # an [action, info] each, not an error
    assert [action["a"].shape for action, _ in good] == [(1, 4, 2)] * 2
    assert policy.rows_per_call[0] == 2  # the two clean requests were still merged into one call
    assert after["a"].shape == (1, 4, 2)


class LanguageFactsPolicy(RaisingPolicy):
    """A policy whose language_sources() or count_language_tokens() (read on the socket thread) raises `error`."""

    def __init__(self, error: BaseException, method: str) -> None:
        super().__init__(error)
        self.method = method

    def language_sources(self):
        if self.method == "language_sources":
            raise self.error
        return frozenset()

    def count_language_tokens(self, text):
        if self.method == "count_language_tokens":
            raise self.error
        return 1


def long_instruction_message() -> bytes:
    """A get_action whose instruction is long enough for the server to count its tokens with the policy's tokenizer."""
    return get_action_message({**small_observation(), "language": {"task": [["pick " * 200]]}})


@pytest.mark.parametrize("error", [SystemExit(2), KeyboardInterrupt()], ids=lambda e: type(e).__name__)
def test_language_sources_raising_a_base_exception_leaves_the_server_serving(error):
    """It stopped the server's socket thread: every client then waited for ever."""
    with running_server(LanguageFactsPolicy(error, "language_sources")) as server:
        action, _ = decoded(raw_round_trip(server.port, long_instruction_message(), 3000))
        assert decoded(raw_round_trip(server.port, codec.encode({"endpoint": "ping"}), 3000))["status"] == "ok"
    assert action["a"].shape == (1, 4, 2)


@pytest.mark.parametrize("error", [SystemExit(2), KeyboardInterrupt()], ids=lambda e: type(e).__name__)
def test_a_token_counter_raising_a_base_exception_fails_only_that_request(error):
    """It stopped the server's socket thread: every client then waited for ever."""
    with running_server(LanguageFactsPolicy(error, "count_language_tokens")) as server:
        message = error_of(raw_round_trip(server.port, long_instruction_message(), 3000))
        action, _ = decoded(raw_round_trip(server.port, get_action_message(small_observation()), 3000))
    assert message == f"internal error in get_action: {type(error).__name__}"
    assert action["a"].shape == (1, 4, 2)

class FailingFactsPolicy(RaisingPolicy):
    """A policy whose get_modality_config() or identity() raises `error` (sys.exit() in a config loader)."""

    def __init__(self, error: BaseException, method: str) -> None:
        super().__init__(error)
        self.method = method

    def get_modality_config(self):
        if self.method == "get_modality_config":
            raise self.error
        return {}

    def identity(self):
        if self.method == "identity":
            raise self.error
        return {"name": "mine"}


@pytest.mark.parametrize("method", ["get_modality_config", "identity"])
@pytest.mark.parametrize("error", [SystemExit(2), KeyboardInterrupt()], ids=lambda e: type(e).__name__)
def test_a_policy_fact_raising_a_base_exception_is_named_in_server_info_and_serving_goes_on(error, method):
    with running_server(FailingFactsPolicy(error, method)) as server:
        with PolicyClient(port=server.port, timeout_ms=3000) as client:
            info = client.get_server_info()
            assert client.ping()
        reported = info["modality_configs"] if method == "get_modality_config" else info["policy_identity"]
    assert reported == {"error": f"internal error in {method}: {type(error).__name__}"}


@pytest.mark.parametrize("error", [SystemExit(2), KeyboardInterrupt()], ids=lambda e: type(e).__name__)
def test_get_modality_config_raising_a_base_exception_is_answered_as_an_internal_error_and_serving_goes_on(error):
    with running_server(FailingFactsPolicy(error, "get_modality_config")) as server:
        message = error_of(raw_round_trip(server.port, codec.encode({"endpoint": "get_modality_config"}), 3000))
        assert decoded(raw_round_trip(server.port, codec.encode({"endpoint": "ping"}), 3000))["status"] == "ok"
    assert message == f"internal error in get_modality_config: {type(error).__name__}"


def msgpack_numpy_map(array: np.ndarray, **changes: Any) -> Dict[bytes, Any]:
    """The reference format's map of `array` (msgpack-numpy), with fields replaced by `changes`."""
    fields = {b"nd": True, b"type": array.dtype.str, b"kind": b"", b"shape": list(array.shape),
              b"data": array.tobytes()}
    return {**fields, **{name.encode(): value for name, value in changes.items()}}


JOINTS = np.zeros((1, 1, 7), np.float32)


@pytest.mark.parametrize("joints", [
    pytest.param(msgpack_numpy_map(JOINTS, data=JOINTS.tobytes()[:-4]), id="data-4-bytes-short"),
    pytest.param(msgpack_numpy_map(JOINTS, type="<f8"), id="dtype-too-wide-for-the-data"),
    pytest.param(msgpack_numpy_map(JOINTS, shape=[2 ** 40, 1, 7]), id="huge-shape"),
    pytest.param(msgpack_numpy_map(JOINTS, shape=[-1, 1, 7]), id="negative-dimension"),
    pytest.param(msgpack_numpy_map(JOINTS, type="|O"), id="object-dtype"),
    pytest.param(msgpack_numpy_map(JOINTS, kind=b"V"), id="structured-kind"),
])
def test_an_undecodable_array_is_refused_naming_its_key(joints):
    """A reference-format request with one malformed array was refused without saying which key held it."""
    policy = EchoPolicy()
    observation = {"state": {"gripper": msgpack_numpy_map(np.zeros((1, 1, 1), np.float32)), "joints": joints}}
    message = msgpack.packb({"endpoint": "get_action", "data": {"observation": observation, "options": None}},
                            use_bin_type=True)
    with running_server(policy) as server:
        error = error_of(raw_round_trip(server.port, message))
    assert "data.observation.state.joints: " in error
    assert policy.calls == 0


def test_an_undecodable_array_under_keys_sent_as_bytes_is_named_by_them():
    """The decoders take bytes keys, but the key path stopped at the first one: no path at all."""
    joints = msgpack_numpy_map(JOINTS, data=b"\x00" * 24)
    message = msgpack.packb({b"endpoint": b"get_action",
                             b"data": {b"observation": {b"state": {b"joints": joints}}}}, use_bin_type=True)
    with pytest.raises(codec.WireDecodeError, match=r"^data\.observation\.state\.joints: "):
        codec.decode(message)


def test_a_str_that_is_not_utf8_is_refused_naming_its_key_and_the_encoding_expected():
    """A C/C++ peer's Latin-1 instruction (a msgpack str of non-UTF-8 bytes) got 'undecodable message
    (UnicodeDecodeError: ...)', naming neither the key nor what was expected; the server answers the next request."""
    latin1 = b"\xa5pick up the caf\xe9 cup"[1:]  # a fixstr header for 20 bytes, then Latin-1 text
    packed = msgpack.packb({"endpoint": "get_action", "data": {"observation": {"language": {"task": "X" * 20}}}},
                           use_bin_type=True)
    message = packed.replace(b"\xb4" + b"X" * 20, b"\xb4" + latin1.ljust(20, b"!"))
    policy = EchoPolicy()
    with running_server(policy) as server:
        error = error_of(raw_round_trip(server.port, message))
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            assert client.ping()
    assert "data.observation.language.task: text that is not UTF-8 (byte 0xe9" in error
    assert "send text as UTF-8" in error and policy.calls == 0


# --- #3 one multipart frame referenced by many keys ---------------------------------------------------------------


def aliasing_message(references: int, frame: bytes, shape: List[int]) -> List[bytes]:
    reference = msgpack.ExtType(ARRAY_REFERENCE_EXT, msgpack.packb([2, "<f4", shape]))
    observation = {"state": {f"k{i}": reference for i in range(references)}}
    header = msgpack.packb({"endpoint": "get_action", "data": {"observation": observation}}, use_bin_type=True)
    return [codec.MULTIPART_MAGIC, header, frame]


def test_a_multipart_frame_referenced_by_two_keys_is_refused_naming_the_frame():
    policy = EchoPolicy()
    frame = np.zeros((4, 1, 4096), np.float32).tobytes()
    with running_server(policy) as server:
        message = error_of(raw_round_trip(server.port, aliasing_message(2, frame, [4, 1, 4096])))
    # refused by the codec as the header is decoded (gr00t_client.codec.decode_multipart), before any key is read
    assert "frame 2 is referenced twice" in message
    assert policy.calls == 0


def test_a_multipart_frame_referenced_twice_in_one_list_is_refused():
    reference = msgpack.ExtType(ARRAY_REFERENCE_EXT, msgpack.packb([2, "<f4", [4, 1, 4096]]))
    header = msgpack.packb({"endpoint": "get_action", "data": {"observation": {"state": {"k": [reference, reference]}}}},
                           use_bin_type=True)
    with running_server(EchoPolicy()) as server:
        message = error_of(raw_round_trip(server.port, [codec.MULTIPART_MAGIC, header, bytes(4 * 4096 * 4)]))
    assert "frame 2 is referenced twice" in message


def test_thousands_of_references_to_one_large_frame_cost_one_scan_and_pings_stay_fast():
    frame = np.zeros((64, 1, 16384), np.float32).tobytes()  # 4 MiB: a scan per reference took about 9 s
    message = aliasing_message(3000, frame, [64, 1, 16384])
    with running_server(EchoPolicy()) as server:
        assert decoded(raw_round_trip(server.port, codec.encode({"endpoint": "ping"}), 10000))["status"] == "ok"
        started = time.monotonic()
        reply = raw_round_trip(server.port, message, 20000)
        elapsed = time.monotonic() - started
        pinged = decoded(raw_round_trip(server.port, codec.encode({"endpoint": "ping"}), 10000))
    assert "frame 2 is referenced twice" in error_of(reply)
    # One scan takes milliseconds; the bound leaves a loaded 2-core machine room and stays far under a scan each.
    assert elapsed < 4.0 and pinged["status"] == "ok"


def test_large_arrays_viewing_one_single_frame_message_are_not_taken_for_shared_frames():
    observation = {"state": {"a": np.ones((1, 1, 8192), np.float32), "b": np.ones((1, 1, 8192), np.float32)}}
    with running_server(EchoPolicy()) as server:  # arrays of 16 KiB and more view the received frame, each its own part
        action, info = decoded(raw_round_trip(server.port, get_action_message(observation)))
    assert info["first_state"] == 1.0


# --- #4 language sent as bytes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", [[b"pick up the bowl. " * 200], b"pick up the bowl. " * 200], ids=["list", "bare"])
def test_language_sent_as_bytes_is_held_to_the_character_limit(language):
    policy = EchoPolicy()
    observation = dict(small_observation(), language={"task": language})
    with running_server(policy) as server:
        message = error_of(raw_round_trip(server.port, get_action_message(observation)))
    row = " in row 0" if isinstance(language, list) else ""  # a list's entry is named by its row
    assert message == f"language 'language.task'{row} has 3600 characters; this server accepts at most 2048 (--max-language-chars)"
    assert policy.calls == 0


def test_bytes_that_are_not_utf8_text_are_data_and_pass_the_language_limits():
    policy = EchoPolicy()
    observation = dict(small_observation(), blob=bytes(range(256)) * 20)
    with running_server(policy) as server:
        decoded(raw_round_trip(server.port, get_action_message(observation)))
    assert policy.calls == 1


@pytest.mark.parametrize("where", ["nested video", "flat key", "list under state"])
def test_binary_bytes_outside_language_are_data_even_when_they_decode_as_utf8(where):
    mask = (np.arange(64 * 64) % 2).astype(np.uint8).tobytes()  # a 64x64 0/1 mask: 4096 bytes, all valid UTF-8
    extra = {"nested video": {"video": {"mask_raw": mask}}, "flat key": {"video.mask_raw": mask},
             "list under state": {"state": {"x": np.zeros((1, 1, 3), np.float32), "raw": [mask]}}}[where]
    policy = EchoPolicy()
    with running_server(policy) as server:
        decoded(raw_round_trip(server.port, get_action_message({**small_observation(), **extra})))
    assert policy.calls == 1


def sim_server_policy(language_key: str = LANGUAGE_KEY) -> Gr00tSimPolicyWrapper:
    configs = dict(libero_like_configs(), language=ModalityConfig(delta_indices=[0], modality_keys=[language_key]))
    return Gr00tSimPolicyWrapper(EchoPolicy(configs), strict=False)


@pytest.mark.parametrize(
    "language_key, sent_under",
    [(LANGUAGE_KEY, LANGUAGE_KEY), ("task", "task"), ("task", "annotation.human.coarse_action")],
    ids=["config key", "custom key", "legacy key"],
)
def test_language_bytes_under_the_flat_keys_the_sim_wrapper_decodes_are_held_to_the_limit(language_key, sent_under):
    policy = sim_server_policy(language_key)
    observation = {sent_under: [b"pick up the bowl. " * 200]}
    with running_server(policy) as server:
        message = error_of(raw_round_trip(server.port, get_action_message(observation)))
        served = decoded(raw_round_trip(server.port, get_action_message({sent_under: [b"pick up the bowl."]})))
    assert message == (
        f"language '{sent_under}' in row 0 has 3600 characters; this server accepts at most 2048 (--max-language-chars)"
    )
    assert policy.policy.calls == 1 and "action.x" in served[0]  # only the short instruction reached the policy


def test_a_flat_key_the_sim_wrapper_does_not_read_as_language_may_carry_long_text_bytes():
    policy = sim_server_policy()
    observation = {LANGUAGE_KEY: [b"pick up the bowl."], "video.notes": b"a long note. " * 400}
    with running_server(policy) as server:
        decoded(raw_round_trip(server.port, get_action_message(observation)))
    assert policy.policy.calls == 1


def test_language_bytes_past_four_bytes_a_character_are_refused_undecoded():
    limits = ServerLimits()
    for text in (b"\xff" * 100_000, b"pick up the bowl. " * 10_000):  # not UTF-8, or text: too long either way
        with pytest.raises(RequestError) as caught:
            check_observation({"language": {"task": [text]}}, limits)
        assert str(caught.value) == (
            f"language 'language.task' in row 0 has {len(text)} bytes, more than 2048 characters however they decode; this "
            "server accepts at most 2048 (--max-language-chars)"
        )


# --- #5 NaN/inf anywhere in the action; a result that is not (action, info) --------------------------------------


NON_FINITE_ACTIONS = {
    "numpy scalar": lambda rows: ({"a": np.float32("nan")}, {}),
    "python float": lambda rows: ({"a": float("inf")}, {}),
    "list": lambda rows: ({"a": [[float("nan"), 0.0]]}, {}),
    "nested map": lambda rows: ({"arm": {"joints": np.full((rows, 4, 2), np.nan, np.float32)}}, {}),
}


@pytest.mark.parametrize("make", NON_FINITE_ACTIONS.values(), ids=NON_FINITE_ACTIONS.keys())
def test_nan_or_inf_anywhere_in_the_action_is_never_sent(make):
    with running_server(ReturningPolicy(make)) as server:
        message = error_of(raw_round_trip(server.port, get_action_message(small_observation())))
    assert "non-finite" in message and "the action was not sent" in message


def test_a_nan_in_a_nested_action_map_names_its_dotted_key_and_rows():
    with running_server(ReturningPolicy(NON_FINITE_ACTIONS["nested map"])) as server:
        message = error_of(raw_round_trip(server.port, get_action_message(small_observation(rows=2))))
    assert message.startswith("the policy produced non-finite values (NaN or inf) in action key 'arm.joints' rows [0, 1]")


def test_a_masked_array_in_the_action_is_refused_naming_its_key_not_a_bare_type_error():
    masked = np.ma.masked_invalid(np.array([[[np.nan, 0.0]] * 4], np.float32))
    with running_server(ReturningPolicy(lambda rows: ({"arm": masked}, {}))) as server:
        message = error_of(raw_round_trip(server.port, get_action_message(small_observation()), 3000))
    assert "action key 'arm' is a numpy masked array (shape (1, 4, 2), 4 masked entries)" in message, message


def cyclic_action(rows: int) -> Any:
    action: Dict[str, Any] = {"a": np.zeros((rows, 4, 2), np.float32)}
    action["debug"] = action
    return action, {}


def test_an_action_holding_a_reference_cycle_is_refused_and_the_next_request_is_served():
    """The finite check walked the cycle for ever: the worker spun and no get_action of any client was answered."""
    results = iter([cyclic_action, lambda rows: ({"a": np.zeros((rows, 4, 2), np.float32)}, {})])
    policy = ReturningPolicy(lambda rows: next(results)(rows))
    with running_server(policy, shutdown_timeout_s=1) as server:
        refused = raw_round_trip(server.port, get_action_message(small_observation()), 3000)
        served = raw_round_trip(server.port, get_action_message(small_observation()), 3000)
    assert "action contains a reference cycle at key 'debug'" in error_of(refused)
    assert decoded(served)[0]["a"].shape == (1, 4, 2)


@pytest.mark.parametrize(
    "result, got",
    [
        ({"arm": np.zeros((1, 4, 2)), "gripper": np.zeros((1, 4, 1))}, "a tuple of 2: (str, str)"),
        ((np.zeros((1, 4, 2)), {}), "a tuple of 2: (ndarray, dict)"),
        (None, "NoneType"),
    ],
    ids=["action dict alone", "action not a map", "nothing"],
)
def test_a_result_that_is_not_an_action_and_info_pair_is_a_clear_error(result, got):
    make = (lambda rows: tuple(result)) if isinstance(result, dict) else (lambda rows: result)  # BasePolicy's unpacking
    with running_server(ReturningPolicy(make)) as server:
        message = error_of(raw_round_trip(server.port, get_action_message(small_observation())))
        stats = server.stats.snapshot()
    assert message.startswith(
        f"ActionError: the policy's get_action returned {got}; expected a pair (action: dict, info: dict or None); "
        "nothing was sent"
    )
    # the policy's fault, not the request's (whether or not it checks its own result): an internal error, a call
    assert stats["internal_errors"] == 1 and stats["policy_calls"] == 1


@pytest.mark.parametrize("timing", [False, True], ids=["plain", "server timing"])
def test_a_policy_returning_no_info_is_served_with_an_empty_info_map(timing):
    policy = ReturningPolicy(lambda rows: ({"a": np.zeros((rows, 4, 2), np.float32)}, None))
    with running_server(policy) as server:
        reply = raw_round_trip(server.port, get_action_message(small_observation(), {"return_server_timing": timing}))
    action, info = decoded(reply)
    assert action["a"].shape == (1, 4, 2)
    assert sorted(info) == (["server_timing"] if timing else [])


def test_an_action_and_info_given_as_read_only_mappings_are_served():
    from types import MappingProxyType

    policy = ReturningPolicy(lambda rows: (MappingProxyType({"a": np.zeros((rows, 4, 2), np.float32)}),
                                           MappingProxyType({"note": "ok"})))
    with running_server(policy) as server:
        action, info = decoded(raw_round_trip(server.port, get_action_message(small_observation())))
    assert action["a"].shape == (1, 4, 2) and info == {"note": "ok"}


# --- #6 the NaN explanation with two float arrays under one dotted key ------------------------------------------


class NanWhenFlatKeyPolicy(BasePolicy):
    """NaN actions for an observation that has 'state.x' both nested and flat."""

    supports_batching = True

    def __init__(self) -> None:
        super().__init__(strict=False)

    def _get_action(self, observation, options=None):
        action = np.ones((observation["state"]["x"].shape[0], 4, 2), np.float32)
        if "state.x" in observation:
            action[:] = np.nan
        return {"a": action}, {}

    def reset(self, options=None):
        return {}


def test_the_nan_explanation_copes_with_two_arrays_under_one_dotted_key():
    observation = dict(small_observation(), **{"state.x": np.zeros((1, 1, 3), np.float32)})
    with running_server(NanWhenFlatKeyPolicy(), inline_below_ms=0) as server:
        message = error_of(raw_round_trip(server.port, get_action_message(observation)))
    assert message.startswith("the policy produced non-finite values (NaN or inf) in action key 'a' rows [0]")


def test_a_batch_with_two_arrays_under_one_dotted_key_answers_everyone():
    odd = dict(small_observation(), **{"state.x": np.zeros((1, 1, 3), np.float32)})
    other = dict(small_observation(), **{"state.x": np.ones((1, 1, 3), np.float32)})
    messages = {"odd": get_action_message(odd), "other": get_action_message(other)}
    with running_server(NanWhenFlatKeyPolicy(), max_batch_size=8, batch_timeout_ms=300, inline_below_ms=0) as server:
        replies = in_threads(server.port, messages)
        assert server._loop.queued_requests == 0
    for name in messages:
        assert error_of(replies[name]).startswith("the policy produced non-finite values"), name


# --- #7 client text in the log ------------------------------------------------------------------------------------


def test_a_client_endpoint_name_is_cut_and_escaped_in_the_log(caplog):
    endpoint = "nope\nCRITICAL gr00t_server.serving.server: kill requested by 10.0.0.66; shutting down" + "x" * 100_000
    with running_server(EchoPolicy()) as server, caplog.at_level(logging.WARNING, logger="gr00t_server"):
        message = error_of(raw_round_trip(server.port, codec.encode({"endpoint": endpoint})))
    assert message.startswith("Unknown endpoint: nope\nCRITICAL") and len(message) < 1100
    lines = [record.getMessage() for record in caplog.records if "refused" in record.getMessage()]
    assert lines and all("\n" not in line and len(line) < 1000 for line in lines)
    assert "request 'nope\\nCRITICAL gr00t_server" in lines[0]


# --- #8 a request that arrives while a stopping server waits for a running call ----------------------------------


class GatedPolicy(BasePolicy):
    """Holds each get_action until `release` is set; `entered` is set when a call begins."""

    def __init__(self) -> None:
        super().__init__(strict=False)
        self.entered = threading.Event()
        self.release = threading.Event()

    def _get_action(self, observation, options=None):
        self.entered.set()
        self.release.wait(60)
        return {"a": np.zeros((1, 4, 2), np.float32)}, {}

    def reset(self, options=None):
        return {}


def test_a_request_arriving_while_the_server_stops_gets_the_shutting_down_error_at_once(monkeypatch):
    shutting_down = threading.Event()
    shut_down = RequestLoop.shut_down

    def noting_shut_down(self, worker):
        shutting_down.set()
        shut_down(self, worker)

    monkeypatch.setattr(RequestLoop, "shut_down", noting_shut_down)
    policy = GatedPolicy()
    replies: Dict[str, Any] = {}
    with running_server(policy, inline_below_ms=0) as server:
        message = get_action_message(small_observation())
        running = threading.Thread(target=lambda: replies.update(running=raw_round_trip(server.port, message, 60000)))
        running.start()
        try:
            assert policy.entered.wait(30), "the policy call never started"
            server.stop()
            assert shutting_down.wait(30), "the socket loop never began to shut down"
            # The running call is held until the late request is answered: an answer at all proves it came at once,
            # not after the call.
            late = raw_round_trip(server.port, codec.encode({"endpoint": "get_server_info"}), 30000)
        finally:
            policy.release.set()
            running.join(60)
    assert error_of(late) == "server is shutting down; 'get_server_info' was not run"
    assert decoded(replies["running"])[0]["a"].shape == (1, 4, 2)  # the running call's reply is still sent


# --- #9 a DEALER's envelope -----------------------------------------------------------------------------------------


def dealer_round_trip(port: int, frames: List[bytes]) -> List[bytes]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send_multipart(frames)
        assert sock.poll(5000), "no reply"
        return sock.recv_multipart()
    finally:
        sock.close(linger=0)


def test_a_dealer_multipart_message_with_an_empty_array_frame_and_no_delimiter_is_served():
    reference = msgpack.ExtType(ARRAY_REFERENCE_EXT, msgpack.packb([2, "<f4", [0, 1, 3]]))
    header = msgpack.packb({"endpoint": "get_action", "data": {"observation": {"state": {"x": reference}}}}, use_bin_type=True)
    with running_server(RaisingPolicy(RuntimeError())) as server:
        reply = dealer_round_trip(server.port, [codec.MULTIPART_MAGIC, header, b""])
    assert reply[0] == codec.MULTIPART_MAGIC  # no routing frames of the request echoed ahead of the reply
    result = codec.decode_multipart(reply)
    assert result["ok"] is True and result["result"][0]["a"].shape == (0, 4, 2)


def test_a_request_behind_a_proxy_keeps_its_routing_frames():
    with running_server(EchoPolicy()) as server:  # [client identity, delimiter, payload], as a ROUTER-DEALER proxy sends
        reply = dealer_round_trip(server.port, [b"client-7", b"", codec.encode({"endpoint": "ping"})])
    assert reply[:2] == [b"client-7", b""] and codec.decode(reply[2])["status"] == "ok"


# --- #10 error replies that say what was wrong and what was expected --------------------------------------------


def test_nesting_past_msgpacks_own_limit_gets_the_nesting_limit_message():
    with running_server(EchoPolicy()) as server:
        message = error_of(raw_round_trip(server.port, b"\x91" * 2000 + b"\xc0"))
    assert message == "DecodeLimitError: message nests maps and arrays more than 32 levels deep; the limit is 32"


def test_a_data_map_with_a_key_that_is_not_a_str_names_the_key():
    request = msgpack.packb({"endpoint": "get_action", "data": {"observation": {}, 7: 2}}, use_bin_type=True)
    with running_server(EchoPolicy()) as server:
        message = error_of(raw_round_trip(server.port, request))
    assert message == "'data' for 'get_action' must be a map of named arguments (str keys); got the int key 7"


@pytest.fixture(scope="module")
def libero_policy(tiny_checkpoint):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    return Gr00tPolicy(tiny_checkpoint, "libero_sim", device="cpu")


def test_a_seed_past_torchs_range_for_the_batch_says_which_seeds_are_accepted(libero_policy, tiny_checkpoint):
    from gr00t_server.test_checkpoint import example_observation

    observation = example_observation(tiny_checkpoint, "libero_sim", batch_size=2, image_size=(32, 32))
    with running_server(libero_policy) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError) as caught:
            client.get_action(observation, options={"seed": 2**64 - 1})
    assert caught.value.server_message == (
        "ValueError: options['seed'] must be an int from -9223372036854775808 to 18446744073709551614 for a batch of "
        "2 row(s): row i uses seed + i; got 18446744073709551615"
    )


def test_an_observation_of_zero_rows_is_refused_as_such(libero_policy, tiny_checkpoint):
    from gr00t_server.test_checkpoint import example_observation

    observation = example_observation(tiny_checkpoint, "libero_sim", batch_size=1, image_size=(32, 32))
    empty = {modality: {key: value[:0] for key, value in keys.items()} for modality, keys in observation.items()}
    with running_server(libero_policy) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError) as caught:
            client.get_action(empty)
    assert caught.value.server_message.startswith("ObservationError: observation has 0 rows (a batch of size 0)")


def test_an_undecodable_array_under_a_long_key_is_refused_with_the_reason_kept_in_the_bounded_reply():
    """A 1,200-character key filled the server's bounded error reply: the reason was cut off, only the key shown."""
    policy = EchoPolicy()
    key = "K" * 1200
    observation = {"state": {key: msgpack_numpy_map(JOINTS, data=JOINTS.tobytes()[:-4])}}
    message = msgpack.packb({"endpoint": "get_action", "data": {"observation": observation, "options": None}},
                            use_bin_type=True)
    with running_server(policy) as server:
        error = error_of(raw_round_trip(server.port, message))
    assert "data.observation.state.KKKK" in error and "more characters)" in error
    assert error.endswith("array of dtype <f4 and shape [1, 1, 7] needs 28 bytes, got 24"), error
    assert policy.calls == 0


class ConfiguredPolicy(BasePolicy):
    """A strict policy with a camera and a state in its config, answering one action row per row of its state; the
    result's `info` (and its reset's) is `info`, its error, when set, `error`."""

    def __init__(self, info: Any = None, error: Optional[BaseException] = None) -> None:
        super().__init__()
        self.info, self.error = info or {}, error

    def get_modality_config(self):
        return {"video": ModalityConfig([0], ["cam"]), "state": ModalityConfig([0], ["arm"]),
                "action": ModalityConfig([0, 1, 2, 3], ["arm"])}

    def _get_action(self, observation, options=None):
        if self.error is not None:
            raise self.error
        return {"arm": np.zeros((observation["state"]["arm"].shape[0], 4, 3), np.float32)}, self.info

    def reset(self, options=None):
        return self.info


def configured_observation(rows: int = 1) -> Dict[str, Any]:
    return {"video": {"cam": np.zeros((rows, 1, 8, 8, 3), np.uint8)},
            "state": {"arm": np.zeros((rows, 1, 3), np.float32)}}


def test_an_unlisted_observation_key_with_other_rows_does_not_get_a_correct_action_refused():
    """The action check took the batch size from the first array, listed or not: 'Action key arm has batch size 1;
    expected 2', blaming the policy for a key its config does not list (and its observation check ignored)."""
    observation = configured_observation()
    observation["video"] = {"depth_extra": np.zeros((2, 1, 8, 8, 3), np.uint8), **observation["video"]}
    with running_server(ConfiguredPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        action, _ = client.get_action(observation)
    assert action["arm"].shape == (1, 4, 3)


def test_an_unlisted_flat_key_with_other_rows_does_not_get_a_correct_action_refused():
    observation = {"video.depth_extra": np.zeros((2, 1, 8, 8, 3), np.uint8),  # not in the config
                   "video.cam": np.zeros((1, 1, 8, 8, 3), np.uint8), "state.arm": np.zeros((1, 1, 3), np.float32)}
    with running_server(Gr00tSimPolicyWrapper(ConfiguredPolicy())) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        action, _ = client.get_action(observation)
    assert action["action.arm"].shape == (1, 4, 3)


class OwnChecksPolicy(ConfiguredPolicy):
    """A strict policy with its own observation and action checks, whose get_modality_config raises or returns
    configs in another library's form (as Isaac-GR00T's own ModalityConfig objects): it never needs ours."""

    def __init__(self, configs_fail: bool) -> None:
        super().__init__()
        self.configs_fail, self.calls = configs_fail, 0

    def get_modality_config(self):
        if self.configs_fail:
            raise NotImplementedError("this model has no modality config")
        return {"state": SimpleNamespace(delta_indices=[0], modality_keys=["arm"])}

    def check_observation(self, observation):
        if observation["state"]["arm"].shape[-1] != 3:
            raise ValueError("state.arm must be 3 wide")

    def check_action(self, action):
        pass

    def _get_action(self, observation, options=None):
        self.calls += 1
        return super()._get_action(observation, options)


@pytest.mark.parametrize("configs_fail", [True, False], ids=["raising", "another form"])
def test_a_strict_policy_with_its_own_checks_gets_its_action_whatever_its_modality_config(configs_fail):
    """The rows were counted on get_modality_config() read after the policy ran: every call ran the model, then
    failed ('internal error in get_action: NotImplementedError'), the action lost."""
    policy = OwnChecksPolicy(configs_fail)
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        action, _ = client.get_action({"state": {"arm": np.zeros((1, 1, 3), np.float32)}})
    assert action["arm"].shape == (1, 4, 3) and policy.calls == 1


@pytest.mark.parametrize("key", [("cell", 0), frozenset({"cell"})], ids=["tuple", "frozenset"])
def test_a_tuple_or_frozenset_map_key_in_a_result_is_refused_naming_it_and_serving_goes_on(key):
    """msgpack packs such a key as an array: the server counted a success and the client could not decode the reply
    ('unhashable type: list'), the action lost."""
    with running_server(ConfiguredPolicy({"env": {key: 1.0}})) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError) as action_refused:
            client.get_action(configured_observation())
        with pytest.raises(PolicyServerError) as reset_refused:
            client.reset()
        assert client.ping()
    named = f"has a {type(key).__name__} key {key!r}, which msgpack sends as an array"
    assert action_refused.value.server_message.startswith(
        f"could not encode the result of 'get_action': info.env {named}"), action_refused.value.server_message
    assert reset_refused.value.server_message.startswith(
        f"could not encode the result of 'reset': the reset result.env {named}"), reset_refused.value.server_message


def test_a_result_without_tuples_is_key_checked_without_the_python_walk(monkeypatch):
    """The key check walked every result in Python, naming each nested container's path: an info of 1,500 small
    records cost ~10x its whole encode, and such a get_action 7-16 ms instead of ~4 ms. A result holding no tuple or
    set is now told clean by msgpack alone; one holding a tuple key is walked to name it."""
    walked = []
    monkeypatch.setattr(messages, "_name_unsendable_key", lambda value, where: walked.append(where))
    info = {"steps": [{"t": index, "ok": True, "xy": [index, index], "a": np.zeros(3)} for index in range(1500)]}
    refuse_unsendable_keys(info, "info")
    assert walked == []
    refuse_unsendable_keys({"env": [{("cell", 0): 1.0}]}, "info")
    assert walked == ["info"]


@pytest.mark.parametrize("info", [
    {"steps": [{"t": index, "xy": (index, index), "tags": {"a"}} for index in range(1500)]},
    {"shape": (1, 4, 3), "env": [{"tags": frozenset({"a"}), "pair": (np.zeros(2), b"frame")}]},
], ids=["1,500 records with tuple and set values", "nested tuple values"])
def test_a_result_with_tuple_values_only_is_key_checked_without_the_python_walk(monkeypatch, info):
    """Any tuple value (an info's arr.shape) sent the whole result through the Python walk: an info of 1,500 records
    with a tuple each cost 2.5 ms to check against 0.22 ms to encode, and get_action went from 3.5 to 7.1 ms."""
    walked = []
    monkeypatch.setattr(messages, "_name_unsendable_key", lambda value, where: walked.append(where))
    refuse_unsendable_keys(info, "info")
    assert walked == []


def test_tuple_values_pass_the_key_check_and_a_tuple_key_in_a_dict_subclass_is_still_named():
    """The check packs the result in C and walks it only where it holds a tuple or set, which may be a value."""
    with running_server(ConfiguredPolicy({"shape": (1, 4, 3), "env": [{"tags": frozenset({"a"})}]})) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        assert client.get_action(configured_observation())[1]["shape"] == [1, 4, 3]
    with running_server(ConfiguredPolicy({"env": [OrderedDict({("cell", 0): 1.0})]})) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError) as refused:
            client.get_action(configured_observation())
        assert client.ping()
    assert refused.value.server_message.startswith(
        "could not encode the result of 'get_action': info.env[0] has a tuple key ('cell', 0)")


def test_a_policy_error_with_undecodable_path_characters_reaches_the_client_escaped():
    """A path os.fsdecode made of non-UTF-8 bytes holds lone surrogates: the reply failed to encode and the client got
    a bare 'internal error', without the error's type or text."""
    path = os.fsdecode(b"/data/caf\xe9/calibration.json")
    policy = ConfiguredPolicy(error=ValueError(f"arm state out of the range recorded in {path}"))
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError) as caught:
            client.get_action(configured_observation())
    assert caught.value.server_message == ("ValueError: arm state out of the range recorded in "
                                           "/data/caf\\udce9/calibration.json")
