"""Dtype strings from the wire are checked for a dtype's form before numpy parses them: numpy's parser takes more, and
some of it kills the process (a datetime unit 'M8[Y/0]' divides by zero in C: SIGFPE), so one 60-byte request killed
a policy server with no reply and no log, and a broken server's reply would kill a robot's process the same way. The
decodes run in a child process, so that the defect, were it back, fails a test instead of the test run."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import textwrap

import msgpack
import numpy as np
import pytest

from gr00t_client import codec
from gr00t_client.wire_errors import WireDecodeError

KILLERS = ["M8[Y/0]", "<M8[Y/0]", ">m8[s/0]"]


def npy_blob(descr: str, header_text: str = "") -> bytes:
    """An np.save blob of 8 zero bytes whose header names `descr` (or is `header_text`), as a peer could write it."""
    header = (header_text or repr({"descr": descr, "fortran_order": False, "shape": (1,)})).encode("latin1")
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 8


# Headers whose text shows no bad descr but whose Python literal evaluates to one (a check of the text was passed by
# each, and numpy then built the dtype that kills it)
DISGUISED_HEADERS = [
    "{'descr': '<f4', 'descr': 'M8[Y/0]', 'fortran_order': False, 'shape': (1,), }",
    "{'descr': 'M8' '[Y/0]', 'fortran_order': False, 'shape': (1,), }",
    "{'desc' 'r': 'M8[Y/0]', 'fortran_order': False, 'shape': (1,), }",
    "{'\\x64escr': 'M8[Y/0]', 'fortran_order': False, 'shape': (1,), }",
]


def decode_in_child(message: bytes) -> subprocess.CompletedProcess:
    code = textwrap.dedent("""
        import sys
        from gr00t_client import codec
        try:
            codec.decode(sys.stdin.buffer.read())
        except codec.WireDecodeError as exc:
            print("refused:", exc)
        else:
            print("decoded")
    """)
    return subprocess.run([sys.executable, "-c", code], input=message, capture_output=True, timeout=60)


@pytest.mark.parametrize("dtype", KILLERS)
def test_a_datetime_dtype_that_crashes_numpys_parser_is_refused_not_parsed(dtype):
    msgpack_numpy = {b"nd": True, b"type": dtype, b"kind": b"", b"shape": [1], b"data": b"\0" * 8}
    reference = {"__ndarray_class__": True, "as_npy": npy_blob(dtype)}
    for array in (msgpack_numpy, reference):
        done = decode_in_child(msgpack.packb({"observation": {"x": array}}, use_bin_type=True))
        assert done.returncode == 0, f"the decode killed the process (exit {done.returncode}): {done.stderr[-300:]!r}"
        assert b"refused:" in done.stdout and b"dtype str" in done.stdout, done.stdout


@pytest.mark.parametrize("dtype", ["<f4", "|u1", "<U3", "|b1", "<c8", "<M8[ns]", "<m8[25s]"])
def test_every_dtype_the_codec_writes_still_decodes(dtype):
    array = np.zeros((2, 3), dtype=dtype)
    for wire in (codec.encode({"x": array}), *([] if array.dtype.kind in "mM" else [msgpack.packb(
            {"x": {"__ndarray_class__": True, "as_npy": _saved(array)}}, use_bin_type=True)])):
        decoded = codec.decode(wire)["x"]
        assert decoded.dtype == array.dtype and decoded.shape == (2, 3)


def _saved(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_a_structured_or_comma_dtype_is_refused_naming_the_expected_form():
    for dtype in ("f4,f4", "(2,)f4", "[('a', '<f4')]", "x" * 40):
        message = msgpack.packb({"x": {b"nd": True, b"type": dtype, b"kind": b"", b"shape": [1], b"data": b"\0" * 8}},
                                use_bin_type=True)
        with pytest.raises(WireDecodeError, match="expected one like '<f4'"):
            codec.decode(message)


def test_malformed_json_nested_near_the_recursion_limit_is_refused_as_malformed_at_every_depth():
    """The whole decode refused it; the search for its key path decoded its parts again from a deeper stack, and the
    RecursionError of that second parse replaced the refusal (a server answered 'internal error')."""
    for depth in range(900, 1000, 7):
        as_json = '{"a":' * depth + "1 x"  # a JSON syntax error `depth` levels down
        message = msgpack.packb({"data": {"observation": {"mc": {"__ModalityConfig__": True, "as_json": as_json}}}})
        with pytest.raises(WireDecodeError):
            codec.decode(message)


@pytest.mark.parametrize("header_text", DISGUISED_HEADERS, ids=["key-twice", "concatenated", "split-key", "escaped-key"])
def test_an_np_save_header_whose_literal_evaluates_to_a_killing_descr_is_refused(header_text):
    reference = {"__ndarray_class__": True, "as_npy": npy_blob("", header_text)}
    done = decode_in_child(msgpack.packb({"observation": {"x": reference}}, use_bin_type=True))
    assert done.returncode == 0, f"the decode killed the process (exit {done.returncode}): {done.stderr[-300:]!r}"
    assert b"refused:" in done.stdout and b"dtype str" in done.stdout, done.stdout


def test_np_save_headers_of_other_forms_are_refused_as_malformed_naming_what_is_wrong():
    for header_text, says in [("{'descr': '<f4', 'fortran_order': False}", "must be a dict of 'descr'"),
                              ("{'descr': '<f4', 'fortran_order': 1, 'shape': (1,)}", "'fortran_order' must be"),
                              ("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", "'shape' must be"),
                              ("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}", "structured arrays"),
                              ("__import__('os')", "np.save header")]:
        message = msgpack.packb({"x": {"__ndarray_class__": True, "as_npy": npy_blob("", header_text)}},
                                use_bin_type=True)
        with pytest.raises(WireDecodeError, match=re.escape(says)):
            codec.decode(message)


def test_a_python_2_np_save_header_with_long_ints_still_decodes():
    """An N1/N1.5-era peer on Python 2 wrote shapes as (2L, 3L); numpy reads them without the L, and so does the
    header read here (it refused them as 'invalid decimal literal')."""
    header_text = "{'descr': '<f4', 'fortran_order': False, 'shape': (2L,), }"
    blob = npy_blob("", header_text)
    blob = blob[:-8] + np.array([1.5, -2.0], "<f4").tobytes()
    decoded = codec.decode(msgpack.packb({"x": {"__ndarray_class__": True, "as_npy": blob}}, use_bin_type=True))["x"]
    assert decoded.tolist() == [1.5, -2.0]


def test_an_np_save_header_longer_than_numpys_limit_is_refused_before_it_is_parsed():
    """A 2 MB header padded with a million-element list was evaluated in full (18 s and ~1 GB on the server, for a
    header that is never valid); numpy itself reads at most 10,000 bytes of one."""
    header_text = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'pad': [" + "0," * 1_000_000 + "]}"
    header = header_text.encode("latin1") + b"\n"
    blob = b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header + b"\0" * 4  # format 2.0: a 4-byte length
    message = msgpack.packb({"x": {"__ndarray_class__": True, "as_npy": blob}}, use_bin_type=True)
    with pytest.raises(WireDecodeError, match=r"the header has \d+ bytes; at most 10000 are read"):
        codec.decode(message)
