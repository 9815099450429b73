"""A safetensors file read with plain reads, not a memory map: a file truncated in place while it is read (cp, rsync
--inplace, scp or a shell `>` over it) is a short read, named, where a mapped page past its new end killed the
process with SIGBUS."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from gr00t_server.file_identity import FileIdentity, file_identity

_HEADER_LENGTH = struct.Struct("<Q")  # the format: an 8-byte little-endian header length, then the JSON header
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "C64": torch.complex64,
    **{name: getattr(torch, attr) for name, attr in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"),
                                                     ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
                                                     ("F8_E5M2FNUZ", "float8_e5m2fnuz")) if hasattr(torch, attr)},
}


class WeightsFileChangedError(RuntimeError):
    """The file changed (shrank, was replaced or rewritten) while it was read."""


class WeightsFile:
    """The tensors of one safetensors file, each read into memory of its own with plain reads (one thread reads it).
    Its header is checked by safetensors (SafetensorError for a damaged file, as safe_open raises), then read here for
    the offsets."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by __exit__, or below on a failure
        try:
            self._identity = _fd_identity(self._file.fileno())
            with safe_open(str(path), framework="pt"):  # its checks of the header and the data's extent
                pass
            self._entries, self._data_start = self._read_header()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> "WeightsFile":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._file.close()

    def keys(self) -> list[str]:
        """The tensor names, in the order of their data in the file: read front to back."""
        return sorted(self._entries, key=lambda key: self._entries[key]["data_offsets"][0])

    def shape(self, key: str) -> list[int]:
        """The shape of tensor `key`, as its header gives it."""
        return list(self._entries[key]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        """The torch dtype of tensor `key`; ValueError for a safetensors dtype this torch has none for."""
        name = self._entries[key]["dtype"]
        if name not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {key!r} has dtype {name}, which this torch cannot hold")
        return _DTYPES[name]

    def get_tensor(self, key: str) -> torch.Tensor:
        """Tensor `key`, read into a tensor of its own (a CPU tensor: the copy _read_tensor makes anyway)."""
        begin, end = self._entries[key]["data_offsets"]
        tensor = torch.empty(self.shape(key), dtype=self.dtype(key))
        if end > begin:
            self._read_into(tensor.view(-1).view(torch.uint8).numpy(), self._data_start + begin, key)
        return tensor

    def check_unchanged(self) -> None:
        """WeightsFileChangedError when the file read, or the one its path names now, is not the one opened."""
        try:
            now = file_identity(self.path)
        except OSError:
            now = None
        if _fd_identity(self._file.fileno()) != self._identity or now != self._identity:
            raise WeightsFileChangedError(f"{self.path} changed while it was read (a copy over it?); wait for the "
                                          "copy to finish and start again")

    def _read_header(self) -> tuple[dict[str, dict[str, Any]], int]:
        """The header's tensor entries and where the data starts; the file is the one safe_open checked (else the
        header read here may not be the one it checked)."""
        self.check_unchanged()
        length = _HEADER_LENGTH.unpack(self._read_exactly(_HEADER_LENGTH.size, 0, "its header length"))[0]
        header = json.loads(self._read_exactly(length, _HEADER_LENGTH.size, "its header"))
        header.pop("__metadata__", None)
        return header, _HEADER_LENGTH.size + length

    def _read_exactly(self, size: int, offset: int, what: str) -> bytes:
        """`size` bytes of the file from `offset` (`what`: 'its header', for the message of a short read)."""
        buffer = bytearray(size)
        self._read_into(memoryview(buffer), offset, what)
        return bytes(buffer)

    def _read_into(self, buffer: Any, offset: int, what: str) -> None:
        """Fill `buffer` from the file at `offset`; a read that ends early is the file cut shorter meanwhile."""
        view = memoryview(buffer).cast("B")
        done = 0
        self._file.seek(offset)
        while done < len(view):
            got = self._file.readinto(view[done:])  # Linux reads at most ~2 GiB a call
            if not got:
                name = what if what.startswith("its ") else f"tensor {what!r}"
                raise WeightsFileChangedError(
                    f"{self.path} changed (shrank) while it was read: it ends at byte {offset + done}, inside {name} "
                    f"(bytes {offset}-{offset + len(view)}); wait for the copy to finish and start again")
            done += got


def _fd_identity(fd: int) -> FileIdentity:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns
