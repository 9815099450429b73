"""The decode depth limit holds exactly at its boundary, whichever way the decoder reaches it (the depth walk is
skipped for messages with too few containers to be too deep)."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest

from gr00t_client import codec


def _nested(depth: int, as_map: bool) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = {"k": value} if as_map else [value]
    return value


@pytest.mark.parametrize("as_map", [True, False])
def test_a_message_nested_exactly_to_the_limit_decodes(as_map: bool) -> None:
    limits = codec.DecodeLimits(max_message_bytes=1 << 20, max_depth=4)
    assert codec.decode(msgpack.packb(_nested(4, as_map)), limits) == _nested(4, as_map)


@pytest.mark.parametrize("as_map", [True, False])
def test_a_message_one_level_past_the_limit_is_refused(as_map: bool) -> None:
    limits = codec.DecodeLimits(max_message_bytes=1 << 20, max_depth=4)
    with pytest.raises(codec.DecodeLimitError, match="more than 4 levels deep"):
        codec.decode(msgpack.packb(_nested(5, as_map)), limits)


def test_many_shallow_containers_do_not_count_as_depth() -> None:
    limits = codec.DecodeLimits(max_message_bytes=1 << 20, max_depth=2)
    message = {f"key{i}": [i] for i in range(10)}  # 11 containers, 2 levels
    assert codec.decode(msgpack.packb(message), limits) == message


def test_array_maps_count_as_containers_but_not_as_levels() -> None:
    limits = codec.DecodeLimits(max_message_bytes=1 << 20, max_depth=2)
    message = {"observation": {"x": np.zeros(3, np.float32), "y": np.ones(2, np.float32)}}
    decoded = codec.decode(codec.encode(message), limits)
    np.testing.assert_array_equal(decoded["observation"]["y"], np.ones(2, np.float32))
    with pytest.raises(codec.DecodeLimitError, match="more than 2 levels deep"):
        codec.decode(codec.encode({"a": {"b": {"c": np.zeros(3)}}}), limits)
