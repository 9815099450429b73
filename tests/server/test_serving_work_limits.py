"""Per-request work limits and session bounds: clear errors through a real server, and the session survives."""

from __future__ import annotations

import time
import tracemalloc

import msgpack
import numpy as np
import pytest
from eval.dataset_factory import make_dataset
from reference_peer import EchoPolicy, libero_like_observation, raw_round_trip
from serving import free_port, running_server

from gr00t_client import PolicyClient, PolicyServerError, codec
from gr00t_eval.dataset import LeRobotDataset
from gr00t_server.modality_configs import derive_from_dataset
from gr00t_server.policies import ReplayPolicy
from gr00t_server.serving import ServerLimits, sessions
from gr00t_server.serving.limits import check_observation
from gr00t_server.serving.messages import RequestError


def state_observation(rows: int = 1, text: str = "pick up the cube") -> dict:
    return {"state": {"x": np.zeros((rows, 1, 1), np.float32)}, "language": {"task": [[text]] * rows}}


def refusal(server, observation, **client_kwargs) -> str:
    with PolicyClient(port=server.port, timeout_ms=5000, **client_kwargs) as client:
        with pytest.raises(PolicyServerError) as caught:
            client.get_action(observation)
        assert client.ping()
    return caught.value.server_message


def test_rows_over_the_limit_are_refused_naming_the_key_and_the_flag():
    policy = EchoPolicy()
    with running_server(policy, limits=ServerLimits(max_rows=8)) as server:
        message = refusal(server, state_observation(rows=9))
    assert "has 9 " in message and "at most 8 rows per request" in message and "--max-rows" in message
    assert policy.calls == 0


def test_an_image_without_batch_and_time_axes_is_named_as_such_not_only_as_too_many_rows():
    policy = EchoPolicy()
    observation = {"video": {"front": np.zeros((256, 320, 3), np.uint8)}, **state_observation()}
    with running_server(policy) as server:
        message = refusal(server, observation)
    assert "'video.front' has 256 rows" in message
    assert "looks like one image without its batch and time axes: send (B, T, H, W, 3)" in message
    assert policy.calls == 0


def test_a_long_language_string_is_refused_by_characters_and_by_tokens():
    limits = ServerLimits(max_language_chars=100, max_language_tokens=10)
    with running_server(EchoPolicy(), limits=limits) as server:
        assert "101 characters" in refusal(server, state_observation(text="a" * 101))
        assert "11 words and punctuation marks" in refusal(server, state_observation(text="go " * 11))
        assert "11 words and punctuation marks" in refusal(server, state_observation(text="a," * 5 + "a"))  # 11 chars
        with PolicyClient(port=server.port, timeout_ms=5000) as client:  # 10 characters, 10 tokens: at the limit
            client.get_action(state_observation(text="a," * 5))


def test_gr00t_policy_language_is_held_to_the_limit_in_its_own_tokens(tiny_checkpoint):
    """Words were counted: 512 digits or CJK characters are one word and 512 tokens or more, so a prompt far over
    --max-language-tokens reached the model. A server of a policy with a tokenizer counts its tokens."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(tiny_checkpoint, "new_embodiment", batch_size=1, image_size=(32, 32))
    language_key = next(iter(observation["language"]))
    calls = []
    forward = policy.model.get_action
    policy.model.get_action = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)
    limits = ServerLimits(max_language_tokens=64)
    digits = "7" * 65
    assert policy.count_language_tokens(digits) == 65
    with running_server(policy, limits=limits) as server:
        for text, tokens in ((digits, 65), ("漢" * 30, policy.count_language_tokens("漢" * 30))):
            assert tokens > 64
            message = refusal(server, {**observation, "language": {language_key: [[text]]}}, strict=False)
            assert f"has {tokens} tokens; this server accepts at most 64 (--max-language-tokens)" in message
        with PolicyClient(port=server.port, timeout_ms=60000) as client:  # 64 tokens: at the limit
            client.get_action({**observation, "language": {language_key: [["7" * 64]]}})
    assert len(calls) == 1
    # a policy without a tokenizer: words, a lower bound, as before
    with running_server(EchoPolicy(), limits=limits) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        client.get_action(state_observation(text=digits))


def test_gr00t_policy_language_is_counted_as_the_model_reads_it_formalized(tiny_checkpoint):
    """The raw instruction was counted: 'Pick, place. ' x 26 is 130 tokens as sent but 53 as the model reads it
    (lower-cased, punctuation stripped), and was refused over a limit of 64 it is within."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.processing.text import formalize_language
    from gr00t_server.processing.tokenizer import load_tokenizer
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(tiny_checkpoint, "new_embodiment", batch_size=1, image_size=(32, 32))
    language_key = next(iter(observation["language"]))
    tokenizer = load_tokenizer(str(tiny_checkpoint))
    within, over = "Pick, place. " * 26, "Pick, place. " * 40
    read = len(tokenizer(formalize_language(over), add_special_tokens=False)["input_ids"])
    assert len(tokenizer(within)["input_ids"]) > 64 and read > 64
    with running_server(policy, limits=ServerLimits(max_language_tokens=64)) as server:
        with PolicyClient(port=server.port, timeout_ms=60000) as client:
            client.get_action({**observation, "language": {language_key: [[within]]}})
        message = refusal(server, {**observation, "language": {language_key: [[over]]}}, strict=False)
    assert f"has {read} tokens; this server accepts at most 64 (--max-language-tokens)" in message


def test_language_that_lower_casing_lengthens_past_the_token_limit_is_counted_and_refused(tiny_checkpoint):
    """A text of no more UTF-8 bytes than the limit was never counted (at most a token a byte), but lower-casing it
    (Gr00tPolicy formalizes) grows 'Ⱥ' from 2 bytes to 3: 32 of them, 64 bytes, read as 96 tokens, were served under a
    limit of 64 - as str, as bytes and as a numpy str array."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.processing.text import formalize_language
    from gr00t_server.processing.tokenizer import load_tokenizer
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(tiny_checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(tiny_checkpoint, "new_embodiment", batch_size=1, image_size=(32, 32))
    language_key = next(iter(observation["language"]))
    text = "\u023a" * 32
    read = len(load_tokenizer(str(tiny_checkpoint))(formalize_language(text), add_special_tokens=False)["input_ids"])
    assert len(text.encode()) == 64 and read > 64
    with running_server(policy, limits=ServerLimits(max_language_tokens=64)) as server:
        for sent in ([[text]], [[text.encode()]], np.array([[text]])):
            message = refusal(server, {**observation, "language": {language_key: sent}}, strict=False)
            assert f"has {read} tokens; this server accepts at most 64 (--max-language-tokens)" in message, message


def test_only_language_is_tokenized_and_at_most_rows_x_chars_of_it_per_request():
    """Every str of an observation was tokenized on the socket thread: 6,400 texts of 2,000 characters under keys no
    policy reads held every other client's ping for 3.7 s, to be refused by the policy after. Texts elsewhere meet the
    character limit only; language is counted up to --max-rows x --max-language-chars characters per request."""
    counted = []

    def tokenizer(text):  # the policy's token counter, as token_counter(policy) returns it
        counted.append(len(text))
        return len(text.split())

    limits = ServerLimits(max_rows=4, max_language_chars=1000)  # 4,000 characters of language counted per request
    text = " the" * 150  # 600 characters, 150 tokens: within both limits, long enough to be counted
    check_observation({"state": {"note": [text] * 4}, "extra": np.array([text] * 4)}, limits, count_tokens=tokenizer)
    assert counted == []
    check_observation({"language": {"task": [[text]] * 4, "flat": text}}, limits, count_tokens=tokenizer)
    assert counted == [600] * 5
    counted.clear()
    many = {"language": {f"k{index}": [[text]] * 4 for index in range(3)}}  # 12 texts, 7,200 characters
    with pytest.raises(RequestError, match=r"observation's language texts reach 'language\.k\d' with more than 4000 "
                                           r"characters to count; this server counts at most --max-rows x "
                                           r"--max-language-chars characters of language per request"):
        check_observation(many, limits, count_tokens=tokenizer)
    assert counted == [600] * 6  # the seventh text went over the budget: not tokenized
    with pytest.raises(RequestError, match="at most 1000 "):  # the character limit still holds everywhere
        check_observation({"state": {"note": ["x" * 1001]}}, limits, count_tokens=tokenizer)


def test_a_flood_of_language_texts_is_refused_through_a_server_that_then_serves():
    limits = ServerLimits(max_rows=4, max_language_chars=1000)
    observation = {**state_observation(rows=4), "language": {f"k{index}": [[" the" * 150]] * 4 for index in range(3)}}
    with running_server(EchoPolicy(), limits=limits) as server:
        assert "with more than 4000 characters to count" in refusal(server, observation)


def test_too_many_cameras_and_too_large_images_are_refused():
    limits = ServerLimits(max_cameras=2, max_image_pixels=64 * 64)
    with running_server(EchoPolicy(), limits=limits) as server:
        three = libero_like_observation(height=8, width=8, cameras=["a", "b", "c"])
        assert "3 video keys" in refusal(server, three) and "--max-cameras" in refusal(server, three)
        large = libero_like_observation(height=65, width=64, cameras=["a"])
        assert "65x64 images" in refusal(server, large)


def test_mixed_type_observation_keys_get_a_validation_message_not_a_comparison_error():
    observation = {"state": {"x": np.zeros((1, 1, 1), np.float32), 3: np.zeros((1, 1, 1), np.float32)}}
    with running_server(EchoPolicy(strict=True)) as server:
        message = refusal(server, observation)
    assert "observation keys must be str; got int key '3' in 'state'" in message


def test_a_long_session_id_is_refused():
    with running_server(EchoPolicy(), limits=ServerLimits(max_session_id_chars=64)) as server:
        with PolicyClient(port=server.port, timeout_ms=5000, session_id="s" * 65) as client:
            with pytest.raises(PolicyServerError, match="session_id has 65 characters; this server accepts at most 64"):
                client.get_server_info()
        with PolicyClient(port=server.port, timeout_ms=5000, session_id="s" * 64) as client:
            assert client.get_action(state_observation())[0]


@pytest.fixture(scope="module")
def replay_dataset(tmp_path_factory):
    return LeRobotDataset(make_dataset(tmp_path_factory.mktemp("limits") / "ds", lengths=(6, 9), cameras=("image",)))


def replay(dataset, **kwargs) -> ReplayPolicy:
    return ReplayPolicy(dataset, derive_from_dataset(dataset, action_horizon=4), execution_horizon=2, strict=False, **kwargs)


@pytest.mark.parametrize("batch_size", [10**7, 0, -1, True, 1.5, float("inf"), [1], 2**63, "2"])
def test_a_bad_replay_batch_size_is_refused_and_the_session_keeps_working(replay_dataset, batch_size):
    with running_server(replay(replay_dataset, max_rows=16)) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            with pytest.raises(PolicyServerError, match=r"batch_size must be an int in \[1, 16\]"):
                client.get_action({}, {"batch_size": batch_size})
            action, info = client.get_action({}, {"batch_size": 2})
    assert next(iter(action.values())).shape[0] == 2 and info["current_step"] == [0, 0]


def test_replay_sessions_are_evicted_least_recently_used_first_and_told_so_until_they_reset(replay_dataset):
    """An evicted session's get_action used to be served from episode 0, step 0 without an error: a replay that
    jumped to another recording mid-episode because other clients came and went."""
    policy = replay(replay_dataset)
    with running_server(policy, limits=ServerLimits(max_sessions=2)) as server:
        for session in ("first", "second", "third"):
            with PolicyClient(port=server.port, timeout_ms=5000, session_id=session) as client:
                client.reset({"episode_index": 1})
        assert server.stats.sessions_evicted == 1
        with PolicyClient(port=server.port, timeout_ms=5000, session_id="first") as client:
            assert client.ping()  # endpoints without session state are served
            for _ in range(2):  # and stays refused until it resets
                with pytest.raises(PolicyServerError, match="session 'first' was dropped by the server .the server holds "
                                   r"at most 2 sessions \(--max-sessions\) and it was the least recently used.*call reset"):
                    client.get_action({})
            client.reset({"episode_index": 1, "step_index": 2})
            _action, info = client.get_action({})
    assert (info["episode_index"], info["current_step"]) == (1, 2)
    assert "first" in policy._sessions and len(policy._sessions) <= 3


def test_our_clients_session_dropped_beyond_the_servers_memory_is_still_refused_not_restarted(replay_dataset,
                                                                                             monkeypatch):
    """The server remembers a bounded number of dropped sessions (MAX_DROPPED_MARKS, here cut to 4); a client whose
    session was dropped longer ago was served episode 0, step 0 with no error. Our client marks the requests of a
    session it was served, so the server refuses an unknown one whatever its memory holds."""
    monkeypatch.setattr(sessions, "MAX_DROPPED_MARKS", 4)
    with running_server(replay(replay_dataset), limits=ServerLimits(max_sessions=1)) as server:
        with PolicyClient(port=server.port, timeout_ms=5000, session_id="robot") as robot:
            robot.reset({"episode_index": 1})
            _action, info = robot.get_action({})
            assert (info["episode_index"], info["current_step"]) == (1, 0)
            for index in range(6):  # 1 held + 4 remembered as dropped: "robot" is forgotten altogether
                with PolicyClient(port=server.port, timeout_ms=5000, session_id=f"other-{index}") as other:
                    other.reset({"episode_index": 0})
            assert not server.sessions.knows("robot")
            for _ in range(2):
                with pytest.raises(PolicyServerError, match=r"session 'robot' was dropped by the server \(this server no "
                                                            r"longer knows it: .*\); call reset to start it again"):
                    robot.get_action({})
            assert not server.sessions.knows("robot")  # a refused request takes no place in the table
            robot.reset({"episode_index": 1, "step_index": 2})
            _action, info = robot.get_action({})
    assert (info["episode_index"], info["current_step"]) == (1, 2)


def test_a_restarted_replay_server_refuses_our_continuing_session_and_serves_new_ones(replay_dataset):
    """A replay server restarted under a running client started its session from episode 0, step 0 silently."""
    port = free_port()
    with running_server(replay(replay_dataset), port=port):
        robot = PolicyClient(port=port, timeout_ms=5000, session_id="robot")
        robot.reset({"episode_index": 1})
        robot.get_action({})
    with running_server(replay(replay_dataset), port=port):
        try:
            with pytest.raises(PolicyServerError, match=r"session 'robot' was dropped by the server \(.*or the server "
                                                        r"restarted\), and with it .*; call reset"):
                robot.get_action({})
            robot.reset({"episode_index": 1})
            _action, info = robot.get_action({})
            assert (info["episode_index"], info["current_step"]) == (1, 0)
        finally:
            robot.close()
        with PolicyClient(port=port, timeout_ms=5000) as newcomer:  # a new client's first get_action is served
            _action, info = newcomer.get_action({})
    assert (info["episode_index"], info["current_step"]) == (0, 0)


def test_a_session_idle_too_long_is_dropped_at_its_own_next_request(replay_dataset):
    """Expiry no longer depends on another client's request arriving first."""
    with running_server(replay(replay_dataset), limits=ServerLimits(session_idle_s=0.3)) as server:
        with PolicyClient(port=server.port, timeout_ms=5000, session_id="alone") as client:
            client.reset({"episode_index": 1})
            time.sleep(0.5)
            with pytest.raises(PolicyServerError, match=r"was dropped by the server .it was idle for more than 0.3 s"):
                client.get_action({})
            client.reset({"episode_index": 1})
            _action, info = client.get_action({})
    assert info["episode_index"] == 1 and server.stats.sessions_evicted == 1


def test_replay_policy_alone_keeps_at_most_max_sessions(replay_dataset):
    policy = replay(replay_dataset, max_sessions=3)
    for index in range(10):
        policy.get_action({}, {"_session_id": f"client-{index}"})
    assert list(policy._sessions) == ["client-7", "client-8", "client-9"]


def test_serve_flags_set_the_limits_and_a_bad_one_is_a_one_line_error():
    from gr00t_server.cli import CliError, _server_limits, build_parser

    args = build_parser().parse_args(["serve", "--dataset-path", "d", "--max-rows", "4", "--max-language-tokens", "7",
                                      "--max-sessions", "3", "--max-client-queued-mb", "1",
                                      "--max-client-queued-requests", "2"])
    limits = _server_limits(args)
    assert (limits.max_rows, limits.max_language_tokens, limits.max_sessions) == (4, 7, 3)
    assert limits.max_client_queued_bytes == 1024 * 1024
    assert limits.max_client_queued_requests == 2
    with pytest.raises(CliError, match="--max-cameras must be an int >= 1, got 0"):
        _server_limits(build_parser().parse_args(["serve", "--dataset-path", "d", "--max-cameras", "0"]))
    with pytest.raises(CliError, match="--max-client-queued-requests must be an int >= 1, got 0"):
        _server_limits(build_parser().parse_args(["serve", "--dataset-path", "d", "--max-client-queued-requests", "0"]))


def test_small_float_states_whose_python_sum_overflows_are_still_accepted():
    # float16 65504 twice sums past float16's range in numpy, and 1e308 twice past float64's in Python:
    # both arrays are finite, so the fast summed check must fall through to the exact one, not refuse them.
    from gr00t_server.serving.limits import ServerLimits, check_observation

    check_observation({"state": {"a": np.full((1, 2), 65504, np.float16), "b": np.full((1, 3), 1e308)}}, ServerLimits())


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.complex64, np.complex128])
def test_one_nan_or_inf_in_a_small_state_is_refused_naming_key_and_row(dtype):
    from gr00t_server.serving.limits import ServerLimits, check_observation
    from gr00t_server.serving.messages import RequestError

    for bad in (np.nan, np.inf, -np.inf):
        state = np.zeros((3, 1, 7), dtype)
        state[2, 0, 5] = bad
        with pytest.raises(RequestError, match=r"'state.arm' has non-finite values \(NaN or inf\) in rows \[2\]"):
            check_observation({"state": {"arm": state}}, ServerLimits())


def test_states_a_map_holds_are_checked_there_and_only_good_ones_are_passed_over():
    # check_observation passes a finite float state within the row limit at its map, without stacking it: the states
    # that fail any of those checks (rows, NaN, a masked array's hidden NaN) are still refused naming their key.
    from gr00t_server.serving.limits import ServerLimits, check_observation
    from gr00t_server.serving.messages import RequestError

    good = {"a": np.zeros((1, 1, 3), np.float32), "b": np.zeros((0, 7)), "c": np.ones((2, 4), np.complex64)}
    check_observation({"state": dict(good)}, ServerLimits(max_rows=2))
    with pytest.raises(RequestError, match="'state.rows' has 3 rows"):
        check_observation({"state": {**good, "rows": np.zeros((3, 1))}}, ServerLimits(max_rows=2))
    with pytest.raises(RequestError, match=r"'state.nan' has non-finite values"):
        check_observation({"state": {**good, "nan": np.array([[0.0, np.nan]])}}, ServerLimits(max_rows=2))
    masked = np.ma.masked_array(np.array([[np.nan, 1.0]]), mask=[[True, False]])
    with pytest.raises(RequestError, match=r"'state.masked' has non-finite values"):
        check_observation({"state": {**good, "masked": masked}}, ServerLimits(max_rows=2))


def test_a_long_key_over_many_entries_costs_the_server_memory_near_the_message_size():
    """A 1 MB key holding 300 small entries (a 1.3 MB request) made the checks build 300 dotted paths of 1 MB each
    (every child's path up front): 300 MB; 1,000 entries took a server to 1 GB, and a 4 GB cap to MemoryError."""
    request = msgpack.packb({"endpoint": "get_action", "data": {"observation": {
        "k" * 1_000_000: {f"e{i}": 0 for i in range(300)}}}})
    with running_server(EchoPolicy()) as server:
        tracemalloc.start()
        try:
            reply = raw_round_trip(server.port, request, timeout_ms=30000)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            assert client.ping()
    assert reply is not None and "MemoryError" not in str(codec.decode(reply[0]))
    assert peak < 40 * len(request), f"{peak} bytes traced for a request of {len(request)}"


def test_a_non_finite_number_under_a_long_key_is_named_by_its_cut_path():
    key = "\x1b[2J" + "k" * 5000
    observation = {key: {"inner": [1.0, float("nan")]}, **state_observation()}
    with running_server(EchoPolicy()) as server:
        message = refusal(server, observation)
    assert "has a non-finite value (nan) in a list or as a number" in message
    assert "more characters)" in message and "\x1b" not in message and len(message) < 1000


def test_a_camera_in_the_dicts_of_a_list_counts_once_whatever_the_entries():
    # Each dict of a list made key links of its own, counted as cameras by identity: four entries of one camera key
    # were refused as "4 video keys" under --max-cameras 2.
    from gr00t_server.serving.limits import ServerLimits, check_observation
    from gr00t_server.serving.messages import RequestError

    image = np.zeros((1, 1, 8, 8, 3), np.uint8)
    limits = ServerLimits(max_cameras=2)
    check_observation({"video": {"extra": [{"front": image}] * 4}}, limits)
    with pytest.raises(RequestError, match="3 video keys; this server accepts at most 2 cameras"):
        check_observation({"video": {"a": image, "b": image, "extra": [{"front": image}] * 4}}, limits)
