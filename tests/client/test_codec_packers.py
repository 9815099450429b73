"""The codec's reused per-thread msgpack Packers: same bytes as a fresh msgpack.packb, from any thread, at any size."""

from __future__ import annotations

import collections
import functools
import threading

import msgpack
import numpy as np
import pytest

from gr00t_client import codec


def _observation(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "video": {"cam": rng.integers(0, 255, (1, 1, 96, 96, 3), dtype=np.uint8)},  # 27 KiB: a multipart frame
        "state": {"x": rng.standard_normal((1, 1, 7)).astype(np.float32), "g": np.float64(seed)},
        "language": {"task": [["pick the cube"]]},
    }


def test_encode_gives_the_bytes_a_fresh_packb_gives():
    observation = _observation(0)
    fresh = msgpack.packb(observation, default=codec._encode_hook, use_bin_type=True)
    assert codec.encode(observation) == fresh
    assert codec.encode(observation) == fresh  # and again, from the reused packer


def test_threads_encoding_at_once_each_get_their_own_message():
    errors: list = []

    def worker(seed: int) -> None:
        observation = _observation(seed)
        for _ in range(200):
            frames = codec.encode_multipart(observation)
            decoded = codec.decode_multipart([bytes(frame) for frame in frames])
            reference = codec.decode(codec.encode(observation))
            for message in (decoded, reference):
                if not np.array_equal(message["state"]["x"], observation["state"]["x"]) or not np.array_equal(
                    message["video"]["cam"], observation["video"]["cam"]
                ):
                    errors.append(seed)
                    return

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_a_failed_encode_leaves_the_next_one_intact():
    with pytest.raises(codec.WireEncodeError, match="object dtype"):
        codec.encode({"a": np.array([1, "x"], dtype=object), "b": "x" * 1000})
    with pytest.raises(codec.WireEncodeError):
        codec.encode_multipart({"a": np.zeros(100000), "b": object()})
    assert codec.decode(codec.encode({"ok": [1, 2]})) == {"ok": [1, 2]}
    frames = codec.encode_multipart({"big": np.ones(100000)})
    assert len(frames) == 3  # magic, header, one buffer: the failed encode's buffer is not carried over
    assert codec.decode_multipart([bytes(frame) for frame in frames])["big"].sum() == 100000


def test_a_large_message_does_not_leave_a_large_packer_behind():
    codec.encode({"x": 1})
    reused = codec._PACKERS.reference
    codec.encode({"x": 2})
    assert codec._PACKERS.reference is reused  # small messages: one packer, kept
    image = {"image": np.ones((4, 512, 512, 3), dtype=np.uint8)}  # 3 MiB, spliced: never in the packer's buffer
    assert codec.decode(codec.encode(image))["image"].shape == (4, 512, 512, 3)
    assert codec._PACKERS.reference is reused
    blob = {"blob": b"x" * (3 << 20)}  # 3 MiB of bytes goes through the packer
    assert codec.decode(codec.encode(blob)) == blob
    assert codec._PACKERS.reference is not reused  # its buffer grew to 3 MiB: replaced by a fresh one
    assert codec.decode(codec.encode({"x": 3})) == {"x": 3}


def _large(shape, dtype=np.uint8, seed=0):
    return np.random.default_rng(seed).integers(0, 120, shape).astype(dtype)


SPLICE = codec._SPLICE_MIN_BYTES


@pytest.mark.parametrize(
    "message",
    [
        pytest.param({"image": _large((SPLICE,))}, id="exactly-the-threshold"),
        pytest.param({"image": _large((SPLICE - 1,))}, id="one-byte-under"),
        pytest.param(
            {"endpoint": "get_action", "data": {"observation": {
                "video": {"a": _large((1, 1, 480, 640, 3)), "b": _large((1, 1, 480, 640, 3), seed=1)},
                "state": {"x": np.arange(7, dtype=np.float32).reshape(1, 1, 7), "g": np.float64(2.5)},
                "language": {"task": [["pick up the cube"]]}}, "options": None}, "timeout_ms": 900, "session_id": "s"},
            id="a-request",
        ),
        pytest.param({"t": _large((300, 400), np.float64).T, "be": _large((70000, 2), ">i2"), "b": _large((300000,), bool)},
                     id="non-contiguous-big-endian-bool"),
        pytest.param({"d": _large((40000,), np.int64).astype("datetime64[s]")}, id="datetime"),
        pytest.param([(_large((SPLICE,)), None), {3: _large((SPLICE,)), b"k": 1.5}], id="tuples-int-and-bytes-keys"),
        pytest.param(collections.OrderedDict([("z", _large((SPLICE,))), ("a", 1)]), id="dict-subclass"),
        pytest.param({"many": [_large((SPLICE,))] + list(range(100))}, id="list-longer-than-searched"),
        pytest.param(functools.reduce(lambda inner, _: {"n": inner}, range(30), {"deep": _large((SPLICE,))}),
                     id="deeper-than-searched"),
        pytest.param(_large((SPLICE * 3,)), id="bare-array"),
    ],
)
def test_spliced_encoding_gives_the_bytes_a_fresh_packb_gives(message, request):
    packed_whole = request.node.callspec.id in ("one-byte-under", "list-longer-than-searched", "deeper-than-searched")
    assert codec._holds_spliced_array(message, 0) is not packed_whole  # each case takes the path it is named for
    fresh = msgpack.packb(message, default=codec._encode_hook, use_bin_type=True)
    assert codec.encode(message) == fresh
    assert codec.encode(message) == fresh  # and again, with warm packers


def test_spliced_arrays_decode_back_and_a_large_object_array_is_still_refused():
    message = {"a": _large((1, 600, 600, 3)), "b": [np.float32(1), _large((SPLICE,), np.float32)]}
    decoded = codec.decode(codec.encode(message))
    np.testing.assert_array_equal(decoded["a"], message["a"])
    np.testing.assert_array_equal(decoded["b"][1], message["b"][1])
    with pytest.raises(codec.WireEncodeError, match="object dtype"):
        codec.encode({"ok": _large((SPLICE,)), "bad": np.array([None] * SPLICE, dtype=object)})


def test_small_decoded_arrays_are_writable_and_do_not_alias_the_message():
    message = codec.encode({"state": np.arange(7, dtype=np.float32)})
    state = codec.decode(message)["state"]
    state[0] = 42.0
    assert codec.decode(message)["state"][0] == 0.0
    assert state.flags.writeable and state.dtype == np.float32 and state.shape == (7,)


def test_small_arrays_encode_non_contiguous_inputs_in_c_order():
    array = np.arange(12, dtype=np.int16).reshape(3, 4)[:, ::2]
    assert np.array_equal(codec.decode(codec.encode(array)), array)
    frames = codec.encode_multipart({"a": array})
    assert np.array_equal(codec.decode_multipart([bytes(frame) for frame in frames])["a"], array)


def _random_message(rng: np.random.Generator, depth: int = 0):
    """A random nest of dicts, lists and tuples (some deeper or longer than the splicer searches) with arrays of
    random dtypes around the splice threshold, numpy scalars, strings, bytes and None."""
    kind = rng.integers(0, 10) if depth < 20 else 9
    if kind <= 2:
        return {f"k{i}" if rng.random() < 0.8 else int(i): _random_message(rng, depth + 1) for i in range(rng.integers(0, 5))}
    if kind <= 4:
        items = [_random_message(rng, depth + 1) for _ in range(rng.integers(0, 4))]
        if rng.random() < 0.1:
            items += list(range(70))  # longer than the splicer searches
        return tuple(items) if rng.random() < 0.3 else items
    if kind <= 6:
        dtype = np.dtype(rng.choice(["<f4", "<f8", "uint8", ">i2", "bool"]))
        nbytes = int(rng.choice([12, SPLICE - 8, SPLICE, SPLICE + 40]))  # around the splice threshold
        return rng.integers(0, 100, nbytes // dtype.itemsize).astype(dtype)
    if kind == 7:
        return np.float32(rng.random())
    return rng.choice(["text", b"raw", None, 7, 2.5])


def test_random_messages_encode_to_the_bytes_a_fresh_packb_gives():
    rng = np.random.default_rng(1234)
    spliced = 0
    for _ in range(150):
        message = {"m": _random_message(rng)}
        spliced += codec._holds_spliced_array(message, 0)
        assert codec.encode(message) == msgpack.packb(message, default=codec._encode_hook, use_bin_type=True)
    assert 20 <= spliced <= 130  # both paths were taken many times
