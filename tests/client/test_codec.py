"""Wire codec: encodes the reference's current format, decodes every format a peer may send, refuses pickle."""

import io
import json
import weakref

import msgpack
import msgpack_numpy
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from received_frames import cyclic_gc_off, received_frame

from gr00t_client import ModalityConfig, WireDecodeError, WireEncodeError, codec, wire_decode

# server-eval.md §2.4: a float32 [[1, 2]] array as the reference encodes it (bin keys, str type value).
FLOAT32_1x2_BYTES = bytes.fromhex(
    "85" "c4026e64" "c3" "c404" "74797065" "a3" "3c6634" "c404" "6b696e64" "c400"
    "c405" "7368617065" "92" "01" "02" "c404" "64617461" "c408" "0000803f00000040"
)
ACTION_JSON = {
    "delta_indices": [0, 1],
    "modality_keys": ["eef"],
    "sin_cos_embedding_keys": None,
    "mean_std_embedding_keys": None,
    "action_configs": [{"rep": "RELATIVE", "type": "EEF", "format": "XYZ_ROT6D", "state_key": "eef"}],
}


def npy_bytes(array, allow_pickle=False):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


# --- golden bytes -----------------------------------------------------------------------------------


def test_ping_request_bytes_match_the_reference():
    assert codec.encode({"endpoint": "ping"}).hex() == "81a8656e64706f696e74a470696e67"


def test_float32_array_bytes_match_the_reference():
    assert codec.encode(np.array([[1, 2]], np.float32)) == FLOAT32_1x2_BYTES


def test_encoding_matches_msgpack_numpy_byte_for_byte():
    message = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "s": np.float32(1.5), "t": "x", "n": None}
    assert codec.encode(message) == msgpack.packb(message, default=msgpack_numpy.encode)


def test_modality_config_is_encoded_with_the_current_marker_and_enum_names():
    decoded = msgpack.unpackb(codec.encode(ModalityConfig.from_json_dict(ACTION_JSON)), raw=False)
    assert decoded == {"__ModalityConfig__": True, "as_json": ACTION_JSON}


# --- decoding every format --------------------------------------------------------------------------


def test_reference_array_decodes_writable():
    array = codec.decode(FLOAT32_1x2_BYTES)
    assert array.dtype == np.float32 and array.tolist() == [[1.0, 2.0]]
    assert array.flags.writeable
    array[0, 0] = 5.0


@pytest.mark.parametrize("key_type", [bytes, str])
def test_msgpack_numpy_maps_decode_with_bytes_or_str_keys(key_type):
    raw = np.arange(4, dtype="<u2").tobytes()
    fields = {"nd": True, "type": "<u2", "kind": b"", "shape": [2, 2], "data": raw}
    message = {key_type(k, "ascii") if key_type is bytes else k: v for k, v in fields.items()}
    assert codec.decode(msgpack.packb(message)).tolist() == [[0, 1], [2, 3]]


def test_numpy_scalars_decode_to_numpy_scalars():
    value = codec.decode(msgpack.packb(np.float32(2.5), default=msgpack_numpy.encode))
    assert isinstance(value, np.float32) and value == 2.5


def test_early_n16_ndarray_class_decodes():
    message = {"__ndarray_class__": True, "as_npy": npy_bytes(np.eye(2, dtype=np.float64))}
    array = codec.decode(msgpack.packb(message))
    assert array.tolist() == [[1, 0], [0, 1]] and array.flags.writeable


def test_openpi_ndarray_maps_decode():
    array = np.arange(3, dtype=np.int32)
    message = {b"__ndarray__": True, b"data": array.tobytes(), b"dtype": array.dtype.str, b"shape": [3]}
    assert codec.decode(msgpack.packb(message)).tolist() == [0, 1, 2]


@pytest.mark.parametrize("marker", ["__ModalityConfig__", "__ModalityConfig_class__"])
@pytest.mark.parametrize("form", ["map", "json-str", "json-bytes"])
@pytest.mark.parametrize("key_type", [str, bytes])
def test_both_modality_config_markers_decode_in_every_as_json_form(marker, form, key_type):
    as_json = {"map": ACTION_JSON, "json-str": json.dumps(ACTION_JSON), "json-bytes": json.dumps(ACTION_JSON).encode()}[form]
    key = (lambda k: k.encode()) if key_type is bytes else (lambda k: k)
    decoded = codec.decode(msgpack.packb({key(marker): True, key("as_json"): as_json}))
    assert decoded == ModalityConfig.from_json_dict(ACTION_JSON)


def test_modality_config_with_bytes_keys_inside_as_json_decodes():
    as_json = {k.encode(): v for k, v in ACTION_JSON.items()}
    as_json[b"action_configs"] = [{k.encode(): v for k, v in c.items()} for c in ACTION_JSON["action_configs"]]
    assert codec.decode(msgpack.packb({"__ModalityConfig__": True, "as_json": as_json})).modality_keys == ["eef"]


def test_modality_config_marker_without_as_json_is_malformed():
    with pytest.raises(WireDecodeError, match="Malformed ModalityConfig payload"):
        codec.decode(msgpack.packb({"__ModalityConfig__": True}))


def test_round_trip_preserves_nested_values():
    message = {"obs": {"v": np.zeros((1, 2, 3), np.uint8), "l": [["pick"]]}, "t": (1, 2), "c": 1 + 2j, "b": b"\x00"}
    decoded = codec.decode(codec.encode(message))
    assert decoded["obs"]["v"].shape == (1, 2, 3) and decoded["obs"]["l"] == [["pick"]]
    assert decoded["t"] == [1, 2] and decoded["c"] == 1 + 2j and decoded["b"] == b"\x00"


def test_non_contiguous_and_datetime_arrays_round_trip():
    strided = np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2]
    assert np.array_equal(codec.decode(codec.encode(strided)), strided)
    dates = np.array(["2026-01-01", "2026-11-21"], dtype="datetime64[D]")
    assert np.array_equal(codec.decode(codec.encode(dates)), dates)


def test_our_encoding_decodes_with_msgpack_numpy():
    array = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert np.array_equal(msgpack.unpackb(codec.encode(array), object_hook=msgpack_numpy.decode), array)


# --- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("array", [np.array([1, "a"], dtype=object), np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")])])
def test_object_and_void_arrays_are_refused_on_encode(array):
    with pytest.raises(WireEncodeError, match="no pickle"):
        codec.encode({"x": array})
    with pytest.raises(WireEncodeError, match="no pickle"):
        codec.encode_multipart({"x": array})


@pytest.mark.parametrize("nd", [True, 1])
@pytest.mark.parametrize("key_type", [str, bytes])
@pytest.mark.parametrize("type_str", ["|O", "|V8"])
def test_object_and_void_arrays_are_refused_on_decode(nd, key_type, type_str):
    key = (lambda k: k.encode()) if key_type is bytes else (lambda k: k)
    message = {key("nd"): nd, key("type"): type_str, key("kind"): b"", key("shape"): [1], key("data"): b"\x00" * 8}
    with pytest.raises(WireDecodeError):
        codec.decode(msgpack.packb(message))


def test_structured_msgpack_numpy_kind_is_refused():
    message = {b"nd": True, b"type": "<f4", b"kind": b"V", b"shape": [1], b"data": b"\x00" * 4}
    with pytest.raises(WireDecodeError, match="kind"):
        codec.decode(msgpack.packb(message))


def test_pickled_early_n16_payload_is_refused():
    message = {"__ndarray_class__": True, "as_npy": npy_bytes(np.array([1, None], dtype=object), allow_pickle=True)}
    with pytest.raises(WireDecodeError, match="Object arrays cannot be loaded when allow_pickle=False"):
        codec.decode(msgpack.packb(message))


def test_array_whose_data_does_not_match_its_shape_is_refused():
    message = {b"nd": True, b"type": "<f4", b"kind": b"", b"shape": [1000000, 1000000], b"data": b"\x00" * 4}
    with pytest.raises(WireDecodeError, match="needs 4000000000000 bytes, got 4"):
        codec.decode(msgpack.packb(message))


@pytest.mark.parametrize("shape", [[True, 4], [-1, 4], [2.0, 2], "ab"], ids=["bool", "negative", "float", "str"])
def test_an_array_shape_that_is_not_a_list_of_non_negative_ints_is_named_so(shape):
    message = {b"nd": True, b"type": "<f4", b"kind": b"", b"shape": shape, b"data": b"\x00" * 16}
    with pytest.raises(WireDecodeError, match="array shape must be a list of non-negative ints"):
        codec.decode(msgpack.packb(message))


@pytest.mark.parametrize("garbage", [b"", b"\xc1", b"\x92\x01", b"\xdd\xff\xff\xff\xff", b"\xa3ab\xff"])
def test_garbage_raises_wire_decode_error(garbage):
    with pytest.raises(WireDecodeError):
        codec.decode(garbage)


def test_unencodable_value_raises_wire_encode_error_naming_the_type():
    with pytest.raises(WireEncodeError, match="object"):
        codec.encode({"x": object()})


# --- multipart --------------------------------------------------------------------------------------


def test_multipart_round_trip_puts_large_arrays_in_their_own_frames():
    image = np.arange(2 * 64 * 64 * 3, dtype=np.uint8).reshape(2, 64, 64, 3)
    frames = codec.encode_multipart({"image": image, "state": np.ones(3, np.float32), "text": "hi"})
    assert frames[0] == codec.MULTIPART_MAGIC and len(frames) == 3
    decoded = codec.decode_multipart([bytes(memoryview(f)) for f in frames])
    assert np.array_equal(decoded["image"], image) and decoded["text"] == "hi"
    assert decoded["image"].flags.writeable
    assert codec.is_multipart(frames) and not codec.is_multipart([codec.encode({})])


def test_multipart_reference_to_a_missing_frame_is_refused():
    frames = [bytes(memoryview(f)) for f in codec.encode_multipart({"image": np.zeros(100000, np.uint8)})]
    with pytest.raises(WireDecodeError, match="points at frame"):
        codec.decode_multipart(frames[:2])


# --- property: anything we can encode decodes to the same value -------------------------------------

_dtypes = st.sampled_from(["<f4", "<f8", "|u1", "<i2", "<i8", "|b1", "<U3", ">f4"]).map(np.dtype)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(hnp.arrays(dtype=_dtypes, shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=5)))
def test_any_plain_array_round_trips_in_both_formats(array):
    for decoded in (codec.decode(codec.encode(array)), codec.decode_multipart(codec.encode_multipart(array))):
        assert decoded.dtype == array.dtype and decoded.shape == array.shape
        assert np.array_equal(decoded, array, equal_nan=array.dtype.kind == "f")


# --- decoding with share_buffer: large arrays view the message ---------------------------------------

FRAME = np.arange(256 * 256 * 3, dtype=np.uint8).reshape(1, 256, 256, 3)  # a LIBERO camera frame, 196 KB


def request_with_frame() -> dict:
    return {
        "endpoint": "get_action",
        "data": {
            "observation": {
                "video": {"agentview": FRAME, "wrist": FRAME[:, ::-1]},
                "state": {"x": np.ones((1, 1, 1), np.float32)},
                "language": {"task": [["put the bowl on the plate"]]},
            },
            "options": None,
        },
    }


def test_shared_decode_views_large_arrays_in_the_buffer_writably(monkeypatch):
    monkeypatch.setattr(wire_decode, "SHARED_DECODE_MIN_BYTES", 64 * 1024)  # the viewing reader, for a LIBERO-size message
    buffer = bytearray(codec.encode(request_with_frame()))
    video = codec.decode(memoryview(buffer), share_buffer=True)["data"]["observation"]["video"]
    assert np.shares_memory(video["agentview"], np.frombuffer(buffer, np.uint8))
    assert video["agentview"].flags.writeable
    np.testing.assert_array_equal(video["agentview"], FRAME)
    np.testing.assert_array_equal(video["wrist"], FRAME[:, ::-1])
    video["agentview"][0, 0, 0, 0] = 99  # the policy may write: the buffer was handed over
    assert video["agentview"][0, 0, 0, 0] == 99


def test_shared_decode_copies_small_arrays_and_equals_the_copying_decode(monkeypatch):
    monkeypatch.setattr(wire_decode, "SHARED_DECODE_MIN_BYTES", 64 * 1024)
    buffer = bytearray(codec.encode(request_with_frame()))
    shared = codec.decode(memoryview(buffer), share_buffer=True)
    copied = codec.decode(bytes(buffer))
    state = shared["data"]["observation"]["state"]["x"]
    assert not np.shares_memory(state, np.frombuffer(buffer, np.uint8))
    assert shared["data"]["observation"]["language"] == copied["data"]["observation"]["language"]
    assert shared["endpoint"] == copied["endpoint"] and shared["data"]["options"] is None
    for key in ("agentview", "wrist"):
        np.testing.assert_array_equal(shared["data"]["observation"]["video"][key], copied["data"]["observation"]["video"][key])


def test_without_share_buffer_or_with_a_read_only_buffer_arrays_are_copies():
    message = codec.encode(request_with_frame())
    buffer = bytearray(message)
    for decoded in (codec.decode(memoryview(buffer)), codec.decode(message, share_buffer=True)):
        array = decoded["data"]["observation"]["video"]["agentview"]
        assert array.flags.writeable and not np.shares_memory(array, np.frombuffer(buffer, np.uint8))


def test_shared_decode_below_the_reader_threshold_copies_writably():
    """Under SHARED_DECODE_MIN_BYTES msgpack's own unpacker reads the message (cheaper than the Python reader there):
    arrays are writable copies, equal to the viewing reader's."""
    buffer = bytearray(codec.encode(request_with_frame()))
    assert len(buffer) < wire_decode.SHARED_DECODE_MIN_BYTES
    video = codec.decode(memoryview(buffer), share_buffer=True)["data"]["observation"]["video"]
    assert video["agentview"].flags.writeable and not np.shares_memory(video["agentview"], np.frombuffer(buffer, np.uint8))
    np.testing.assert_array_equal(video["agentview"], FRAME)
    np.testing.assert_array_equal(video["wrist"], FRAME[:, ::-1])


def test_shared_decode_of_a_received_zmq_frame_keeps_the_frame_alive(monkeypatch):
    import gc

    monkeypatch.setattr(wire_decode, "SHARED_DECODE_MIN_BYTES", 64 * 1024)

    import zmq

    context = zmq.Context()
    sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    try:
        receiver.bind("inproc://shared-decode")
        sender.connect("inproc://shared-decode")
        sender.send(codec.encode(request_with_frame()))
        frame = receiver.recv(copy=False)
        video = codec.decode(frame.buffer, share_buffer=True)["data"]["observation"]["video"]
        del frame
        gc.collect()
        np.testing.assert_array_equal(video["agentview"], FRAME)
    finally:
        sender.close(linger=0)
        receiver.close(linger=0)
        context.term()


CAMERA_4MB = np.full((1, 1, 1024, 1024, 3), 7, np.uint8)  # over SHARED_DECODE_MIN_BYTES: the viewing reader reads it


@pytest.mark.parametrize("tail", [None, list(range(5000))], ids=["viewed", "read in part, then by msgpack"])
def test_a_shared_decode_frees_the_received_frame_with_the_last_array_that_views_it(tail):
    """The viewing reader's functions called each other through closures that held the buffer, a reference cycle:
    each received frame lived until the cyclic GC ran (a server's RSS rose from 39 MB to 2.3 GB under 8
    reference-wire clients sending 4096x4096 frames, and stayed near 1.9 GB)."""
    frame = received_frame(codec.encode({"video": {"front": CAMERA_4MB}, "tail": tail}))
    alive = weakref.ref(frame)
    with cyclic_gc_off():
        decoded = codec.decode(memoryview(frame), share_buffer=True)
        del frame
        np.testing.assert_array_equal(decoded["video"]["front"], CAMERA_4MB)
        del decoded
        assert alive() is None, "the received frame outlived every array decoded from it"


DEEP: list = [1]
for _ in range(40):
    DEEP = [DEEP]


@pytest.mark.parametrize("message", [
    {"deep": DEEP, "pad": b"x" * 70000},
    {"many": list(range(5000)), "pad": b"x" * 70000},
    {"ext": msgpack.ExtType(5, b"abc"), "pad": b"x" * 70000},
    {"bytes": b"y" * 70000, "array": FRAME},
])
def test_messages_outside_the_viewing_reader_decode_as_without_sharing(message):
    packed = codec.encode(message)
    limits = codec.DecodeLimits.for_message_bytes(1 << 20)
    outcomes = []
    for data, share in ((packed, False), (bytearray(packed), True)):
        try:
            outcomes.append(repr(codec.decode(memoryview(data), limits, share_buffer=share)))
        except codec.WireDecodeError as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}")
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("cut", [1, 100, 1000, 150000])
def test_a_truncated_message_fails_the_same_with_sharing(cut):
    packed = codec.encode(request_with_frame())[:-cut]
    errors = []
    for data, share in ((packed, False), (bytearray(packed), True)):
        with pytest.raises(WireDecodeError) as info:
            codec.decode(memoryview(data), share_buffer=share)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
