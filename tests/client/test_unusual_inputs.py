"""What a robot's own code passes in: masked arrays, numpy scalars, big-endian states, non-str keys, tensors. Each is
refused before it is sent, naming the key and what to send instead; none becomes a different action in silence."""

import numpy as np
import pytest
from reference_peer import EchoPolicy, libero_like_configs, libero_like_observation
from serving import running_server

from gr00t_client import ActionChunker, ObservationError, PolicyClient, PolicyServerError, codec
from gr00t_client.policy import validate_observation


def masked_state(shape=(1, 1, 1), masked=(0, 0, 0)):
    data = np.full(shape, 0.25, np.float32)
    mask = np.zeros(shape, bool)
    mask[masked] = True
    return np.ma.masked_array(data, mask=mask)


@pytest.mark.parametrize("encode", [codec.encode, codec.encode_multipart, codec.encode_early_n16],
                         ids=["reference", "multipart", "npsave"])
@pytest.mark.parametrize("shape", [(1, 1, 2), (1, 1, 40000)], ids=["small", "large"])
def test_a_masked_array_is_refused_on_every_wire_and_size(encode, shape):
    """tobytes() sent a masked entry as the fill value 1e20 (small arrays, reference and multipart) and the other
    paths the data under the mask: a strict server took either and answered with a plausible action."""
    with pytest.raises(codec.WireEncodeError, match=r"a numpy masked array \(shape .*, 1 masked entries\) cannot be "
                                                    r"sent: the wire carries no mask; send array.filled"):
        encode({"state": {"x": masked_state(shape)}})


def test_a_client_names_the_masked_key_and_sends_nothing():
    policy = EchoPolicy()
    observation = libero_like_observation(height=8, width=8)
    key = next(iter(observation["state"]))
    observation["state"][key] = masked_state()
    with running_server(policy) as server:
        for wire in ("auto", "reference", "npsave"):
            with PolicyClient(port=server.port, timeout_ms=5000, wire=wire) as client:
                with pytest.raises(codec.WireEncodeError, match=rf"get_action: observation.state.{key}: a numpy masked array"):
                    client.get_action(observation)
                client.get_action(libero_like_observation(height=8, width=8))  # the client still works
    assert policy.calls == 3


def test_strict_validation_refuses_a_masked_state_naming_it():
    observation = libero_like_observation(height=8, width=8)
    key = next(iter(observation["state"]))
    observation["state"][key] = masked_state()
    with pytest.raises(ObservationError, match=rf"State key '{key}' is a numpy masked array; send value.filled"):
        validate_observation(observation, libero_like_configs())


def test_a_numpy_scalar_state_is_named_as_a_scalar_not_as_its_dtype():
    """'must be a numpy array of dtype float32 ...; got float32' read as a contradiction."""
    observation = libero_like_observation(height=8, width=8)
    key = next(iter(observation["state"]))
    observation["state"][key] = np.float32(0.5)
    with pytest.raises(ObservationError, match=r"got a numpy float32 scalar \(0-d\); send an array of shape \(B, T, D\)"):
        validate_observation(observation, libero_like_configs())


def test_a_big_endian_state_gets_the_conversion_to_send():
    observation = libero_like_observation(height=8, width=8)
    key = next(iter(observation["state"]))
    observation["state"][key] = observation["state"][key].astype(">f4")
    with pytest.raises(ObservationError, match=r"got >f4 \(big-endian: send value.astype\('<f4'\)\)"):
        validate_observation(observation, libero_like_configs())


@pytest.mark.parametrize("convert, says", [
    (lambda frames: (frames / 255.0).astype(">f4"),
     r"got >f4 with shape \(1, 1, 8, 8, 3\) \(floats in \[0, 1\]\? send \(frames \* 255\)\.round\(\)"),
    (lambda frames: (frames.astype(np.uint16) << 8).astype(">u2"), r"got >u2 with shape"),
], ids=["float-frames", "16-bit-frames"])
def test_big_endian_video_of_another_dtype_is_not_told_to_cast_to_uint8(convert, says):
    """The refusal said "big-endian: send value.astype('|u1')": a black image for frames in [0, 1], values mod 256
    for 16-bit frames."""
    observation = libero_like_observation(height=8, width=8)
    key = next(iter(observation["video"]))
    observation["video"][key] = convert(observation["video"][key])
    with running_server(EchoPolicy(strict=True)) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError, match=rf"Video key '{key}' must have dtype uint8; {says}") as refused:
            client.get_action(observation)
    assert "astype('|u1')" not in str(refused.value)


def test_float_video_already_in_0_255_is_told_to_round_and_clip_not_to_multiply_by_255():
    """The hint said '(floats in [0, 1]? send (frames * 255).round().astype(np.uint8))' whatever the values: for
    frames in 0..255 that made values up to 65025, wrapped modulo 256 in the cast, a garbage image."""
    observation = libero_like_observation(height=8, width=8)
    key = next(iter(observation["video"]))
    observation["video"][key] = observation["video"][key].astype(np.float32)
    with running_server(EchoPolicy(strict=True)) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(PolicyServerError, match=rf"Video key '{key}' must have dtype uint8; got float32 with shape "
                                                    r"\(1, 1, 8, 8, 3\) \(floats in 0\.\.255\? send "
                                                    r"frames\.round\(\)\.clip\(0, 255\)\.astype\(np\.uint8\)\)") as refused:
            client.get_action(observation)
    assert "* 255" not in str(refused.value)


@pytest.mark.parametrize("bad_key", [b"image", 0])
def test_non_str_keys_get_the_validation_message_not_a_sorting_type_error(bad_key):
    """The message listed the keys with sorted(), which raised TypeError on mixed bytes/int/str keys."""
    observation = libero_like_observation(height=8, width=8)
    video = observation["video"]
    first = next(iter(video))
    video[bad_key] = video.pop(first)
    with pytest.raises(ObservationError, match=rf"Video key '{first}' is missing from observation\['video'\]; got keys \["):
        validate_observation(observation, libero_like_configs())
    observation[0] = {}
    del observation["video"]
    with pytest.raises(ObservationError, match=r"must contain a 'video' key \(a dict\); got keys \[0, "):
        validate_observation(observation, libero_like_configs())


class TensorLike:
    """Stands in for a JAX or CuPy array: it converts with np.asarray, but the wire has no type for it."""

    def __array__(self, dtype=None, copy=None):
        return np.zeros((1, 1, 1), np.float32)


@pytest.mark.parametrize("wire", ["auto", "reference", "npsave"])
def test_an_unencodable_value_is_refused_naming_its_key_and_what_to_send(wire):
    observation = libero_like_observation(height=8, width=8)
    key = next(iter(observation["state"]))
    observation["state"][key] = TensorLike()
    with running_server(EchoPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000, wire=wire) as client:
        with pytest.raises(codec.WireEncodeError, match=rf"get_action: observation.state.{key}: cannot encode value of type "
                                                        r"TensorLike .*; send a numpy array: np.asarray\(value\)"):
            client.get_action(observation)
        language = next(iter(observation["language"]))
        observation = libero_like_observation(height=8, width=8)
        observation["language"][language] = [["bad \udc80 text"]]
        with pytest.raises(codec.WireEncodeError, match=rf"observation.language.{language}\[0\]\[0\]: the text"):
            client.get_action(observation)


@pytest.mark.parametrize("encode", [codec.encode, codec.encode_multipart, codec.encode_early_n16],
                         ids=["reference", "multipart", "npsave"])
def test_a_str_holding_a_lone_surrogate_is_refused_on_every_wire_saying_it_has_no_utf8_encoding(encode):
    """msgpack carries a str as UTF-8, which a lone surrogate (os.fsdecode's of a non-UTF-8 byte) has not: the refusal
    was the codec's "'utf-8' codec can't encode character ... surrogates not allowed", naming no remedy."""
    with pytest.raises(codec.WireEncodeError, match=r"^the text 'pick \\udcff up' holds a lone surrogate at position 5, "
                                                    r"which is not text: it has no UTF-8 encoding, so no wire format "
                                                    r"can carry it as a str; send valid Unicode text$"):
        encode({"language": {"task": ["pick \udcff up"]}})


def test_a_client_names_the_key_row_and_position_of_a_lone_surrogate_and_sends_nothing():
    policy = EchoPolicy()
    observation = libero_like_observation(height=8, width=8)
    language = next(iter(observation["language"]))
    observation["language"][language] = [["walk to the goal \udcff"]]
    with running_server(policy) as server:
        for wire in ("auto", "reference", "npsave"):
            with PolicyClient(port=server.port, timeout_ms=5000, wire=wire) as client:
                with pytest.raises(codec.WireEncodeError, match=rf"^get_action: observation.language.{language}\[0\]"
                                                                r"\[0\]: the text .* holds a lone surrogate at position "
                                                                r"17, which is not text: it has no UTF-8 encoding"):
                    client.get_action(observation)
                client.get_action(libero_like_observation(height=8, width=8))  # the client still works
    assert policy.calls == 3


def test_a_torch_tensor_gets_the_numpy_conversion_hint():
    torch = pytest.importorskip("torch")
    with pytest.raises(codec.WireEncodeError, match=r"type Tensor for the wire; send a numpy array: "
                                                    r"value.detach\(\).cpu\(\).numpy\(\)"):
        codec.encode({"x": torch.zeros(2)})


def test_unencodable_path_walks_maps_and_lists_and_finds_nothing_in_a_good_value():
    good = {"a": [np.zeros(2), {"b": "text"}], "c": 1}
    assert codec.unencodable_path(good, codec.encode) == ""
    assert codec.unencodable_path({"a": [1, {"b": object()}]}, codec.encode) == "a[1].b"


def test_a_chunker_reset_with_a_0d_array_of_env_ids_says_what_it_takes():
    chunker = ActionChunker(EchoPolicy(), per_env=True)
    chunker.get_action(libero_like_observation(batch=2, height=8, width=8))  # the chunker learns it serves 2 envs
    with pytest.raises(TypeError, match=r"env_ids must be a sequence of env indices or a boolean mask \(e.g. \[2\]\); "
                                        r"got a 0-d ndarray"):
        chunker.reset(env_ids=np.array(1))
    chunker.reset(env_ids=np.array([1]))


def test_an_observation_mixing_flat_keys_and_nested_groups_is_named_as_mixed():
    """The hint said to start the server with --use-sim-policy-wrapper, which a user mixing the forms already ran."""
    observation = libero_like_observation(height=8, width=8)
    for key, value in observation.pop("video").items():
        observation[f"video.{key}"] = value
    with pytest.raises(ObservationError, match=r"observation mixes the flat form \('video.<key>' keys\) with nested "
                                               r"groups \(\['state', 'language'\]\); send one form"):
        validate_observation(observation, libero_like_configs())


class PolicyReturningALoneSurrogate(EchoPolicy):
    """Returns, in its info, a path os.fsdecode made of a non-UTF-8 byte: text the policy made, not the request."""

    def _get_action(self, observation, options=None):
        action, info = super()._get_action(observation, options)
        info["calibration"] = "caf\udce9.json"
        return action, info


@pytest.mark.parametrize("wire", ["auto", "reference", "npsave"])
@pytest.mark.parametrize("timed", [False, True], ids=["plain", "timed"])
def test_a_reply_holding_a_lone_surrogate_names_the_policys_key_not_a_request_remedy(wire, timed):
    """The reply's refusal ended '...; send valid Unicode text', blaming the request (legal, and decoded), and did not
    name the policy's info key that could not be sent."""
    with running_server(PolicyReturningALoneSurrogate()) as server:
        with PolicyClient(port=server.port, timeout_ms=5000, wire=wire, return_server_timing=timed) as client:
            with pytest.raises(PolicyServerError) as refused:
                client.get_action(libero_like_observation(height=8, width=8))
    message = refused.value.server_message
    assert message.startswith("could not encode the result of 'get_action': info.calibration: the text "
                              "'caf\\udce9.json' holds a lone surrogate at position 3"), message
    assert "the policy returned it" in message and "send valid Unicode text" not in message, message


@pytest.mark.parametrize("encode", [codec.encode, codec.encode_multipart, codec.encode_early_n16],
                         ids=["reference", "multipart", "npsave"])
def test_the_refusal_of_a_long_text_shows_a_closed_excerpt_around_its_lone_surrogate(encode):
    """The text was cut at 80 characters of its repr: past about position 78, neither the surrogate nor the repr's
    closing quote was shown."""
    text = "put the red block on the blue block and then " * 4 + "\udcff done"
    position = text.index("\udcff")
    with pytest.raises(codec.WireEncodeError) as refused:
        encode({"language": {"task": [text]}})
    assert str(refused.value).startswith(f"the text ...{text[position - 30:]!r} holds a lone surrogate at position "
                                         f"{position}, "), str(refused.value)


def test_an_excerpt_cut_on_both_sides_is_marked_on_both():
    text = "a" * 100 + "\udcff" + "b" * 100
    with pytest.raises(codec.WireEncodeError, match=r"^the text \.\.\.'a{30}\\udcffb{9}'\.\.\. holds a lone surrogate "
                                                    r"at position 100, "):
        codec.encode(text)


def test_a_lone_surrogate_in_a_map_key_is_refused_naming_the_map_and_the_key():
    """Only leaf values were tried: a key's refusal named neither that it was a key nor the map it sits in."""
    observation = libero_like_observation(height=8, width=8)
    state = next(iter(observation["state"].values()))
    with running_server(EchoPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        with pytest.raises(codec.WireEncodeError, match=r"^get_action: options \(map key 'mode\\udcff'\): the text "
                                                        r"'mode\\udcff' holds a lone surrogate at position 4, "):
            client.get_action(observation, options={"mode\udcff": 1})
        with pytest.raises(codec.WireEncodeError, match=r"^get_action: observation.state \(map key 'arm\\udcff'\): "):
            client.get_action({**observation, "state": {**observation["state"], "arm\udcff": state}})
