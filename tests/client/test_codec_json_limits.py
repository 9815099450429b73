"""A ModalityConfig's as_json may be a JSON string, which json.loads turned into Python objects outside the decode
limits: a 16 MB string of "[]," cost a server 844 MB and 13 s on its socket thread (before the API token was looked
at), and a client as much from a hostile server's reply. Strings over MAX_MODALITY_CONFIG_JSON_CHARS are refused
unparsed, and the JSON of the rest counts against the message's item budget, as msgpack items do."""

from __future__ import annotations

import json
import time
import tracemalloc

import msgpack
import pytest
import zmq
from reference_peer import EchoPolicy, ReferenceClient, running_server

from gr00t_client import ModalityConfig, codec

CONFIG = {"delta_indices": [0], "modality_keys": ["arm", "gripper"]}


def config_map(as_json, key=str):
    return {key("__ModalityConfig__"): True, key("as_json"): as_json}


def limits_for(message: bytes) -> codec.DecodeLimits:
    return codec.DecodeLimits.for_message_bytes(max(len(message), 1 << 20))


def test_real_configs_sent_as_json_strings_still_decode_within_the_limits():
    message = msgpack.packb({name: config_map(json.dumps({**CONFIG, "modality_keys": [name]}))
                             for name in ("video", "state", "action", "language")})
    decoded = codec.decode(message, limits_for(message))
    assert isinstance(decoded["action"], ModalityConfig) and decoded["action"].modality_keys == ["action"]


@pytest.mark.parametrize("form", [str, lambda text: text.encode()], ids=["str", "bytes"])
def test_an_as_json_string_over_the_cap_is_refused_before_it_is_parsed(form):
    bomb = "[" + "[]," * 6_000_000 + "[]]"  # 18 MB: 6 million lists
    message = msgpack.packb({"endpoint": "get_action", "data": {"x": config_map(form(bomb))}}, use_bin_type=True)
    started = time.perf_counter()
    tracemalloc.start()
    try:
        with pytest.raises(codec.DecodeLimitError, match=r"as_json is 18000004 characters long; a ModalityConfig's "
                                                         r"JSON is at most 65536"):
            codec.decode(message, limits_for(message))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(message), peak  # the message's own bytes and a copy, not 6 million lists
    assert time.perf_counter() - started < 2.0


def valid_config_json(values: int) -> str:
    """A valid config whose delta_indices hold `values` zeros: 2 characters per value."""
    return json.dumps({"delta_indices": [0] * values, "modality_keys": ["arm"]}, separators=(",", ":"))


def test_many_valid_configs_under_the_cap_count_against_the_message_budget():
    one = valid_config_json(30_000)  # 60 KB each: under the cap, 30,000 items each
    message = msgpack.packb({"data": [config_map(one) for _ in range(200)]})  # 12 MB, item budget 16384 + 187,500
    tracemalloc.start()
    try:
        with pytest.raises(codec.DecodeLimitError, match="counting one per 2 characters of each ModalityConfig's as_json"):
            codec.decode(message, limits_for(message))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(message), peak


def test_the_shared_buffer_reader_hands_json_configs_to_the_counting_unpacker():
    """Messages from 1 MiB decoded with share_buffer go through the viewing reader, which counts no JSON: it gives
    them to msgpack's unpacker with its budget (a config map made of msgpack values needs no such care)."""
    one = valid_config_json(30_000)
    message = bytearray(msgpack.packb({"data": [config_map(one) for _ in range(200)]}))
    with pytest.raises(codec.DecodeLimitError, match="counting one per 2 characters"):
        codec.decode(message, limits_for(message), share_buffer=True)
    valid = bytearray(msgpack.packb({"pad": b"\0" * (2 << 20), "action": config_map(CONFIG),
                                     "state": config_map(json.dumps(CONFIG))}, use_bin_type=True))
    decoded = codec.decode(valid, limits_for(valid), share_buffer=True)
    assert decoded["action"].modality_keys == decoded["state"].modality_keys == ["arm", "gripper"]


def test_a_server_refuses_a_json_bomb_at_once_and_keeps_serving_others():
    bomb = "[" + "[]," * 5_000_000 + "[]]"  # 15 MB, no token
    request = msgpack.packb({"endpoint": "get_action", "data": {"x": config_map(bomb)}}, use_bin_type=True)
    with running_server(EchoPolicy(), api_token="s3cret", max_message_bytes=64 << 20) as server:
        context = zmq.Context()
        try:
            attacker = context.socket(zmq.REQ)
            attacker.setsockopt(zmq.LINGER, 0)
            attacker.connect(f"tcp://127.0.0.1:{server.port}")
            started = time.perf_counter()
            attacker.send(request)
            assert attacker.poll(20000), "no reply"
            reply = msgpack.unpackb(attacker.recv(), raw=False)
            elapsed = time.perf_counter() - started
            attacker.close()
        finally:
            context.term()
        assert "as_json is 15000004 characters long" in reply["error"], reply
        assert elapsed < 5.0  # was 13.8 s for 16 MB, blocking every other client meanwhile
        with ReferenceClient(server.port, api_token="s3cret") as client:
            assert client.call_endpoint("ping", requires_input=False)["status"] == "ok"
