"""Our streaming safetensors writer against the safetensors library (the oracle) and header checks."""

from __future__ import annotations

import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from builder.errors import CheckpointError
from builder.layout import TensorSpec
from builder.safetensors_io import read_header, sha256_file, write_stream


def sample() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.bf16": torch.randn(7, 5, generator=g).bfloat16(),
        "b.u8": torch.randint(0, 256, (3, 4, 2), generator=g, dtype=torch.uint8),
        "c.e4m3": torch.randn(6, 3, generator=g).to(torch.float8_e4m3fn),
        "d.scalar": torch.tensor(0.125),
    }


def test_stream_writer_reads_back_with_safetensors(tmp_path):
    tensors = sample()
    plan = [TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    path = tmp_path / "x.safetensors"

    def produce(spec):  # two chunks per tensor when it has rows
        t = tensors[spec.name]
        if t.dim() and t.shape[0] > 1:
            yield t[:1]
            yield t[1:]
        else:
            yield t

    digest = write_stream(path, plan, produce)
    assert digest == sha256_file(path)
    back = load_file(path)
    assert set(back) == set(tensors)
    for n, t in tensors.items():
        assert back[n].dtype == t.dtype and back[n].shape == t.shape
        assert torch.equal(back[n].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))
    header = read_header(path)
    assert header.tensors["c.e4m3"] == TensorSpec("c.e4m3", torch.float8_e4m3fn, (6, 3))


def test_reads_library_written_files(tmp_path):
    path = tmp_path / "lib.safetensors"
    save_file(sample(), path)
    assert set(read_header(path).tensors) == set(sample())


def test_wrong_chunk_size_is_an_internal_error(tmp_path):
    plan = [TensorSpec("x", torch.uint8, (4,))]
    with pytest.raises(RuntimeError, match="produced 3 bytes, planned 4"):
        write_stream(tmp_path / "x.safetensors", plan, lambda s: iter([torch.zeros(3, dtype=torch.uint8)]))


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:5], "truncated safetensors file"),
    (lambda b: struct.pack("<Q", 10**12) + b[8:], "corrupt safetensors header"),
    (lambda b: b[:8] + b"{nope" + b[13:], "not JSON"),
    (lambda b: b[:-10], "truncated: header promises"),
])
def test_corrupt_files_are_named(tmp_path, mutate, message):
    path = tmp_path / "x.safetensors"
    save_file(sample(), path)
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(CheckpointError, match=message) as info:
        read_header(path)
    assert str(path) in str(info.value)
