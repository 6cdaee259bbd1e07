"""The ARM kernels (NEON with and without the dot-product extension), cross-compiled with Debian's
aarch64 toolchain and run under qemu-user: correctness only (speed cannot be measured there).
`make test` installs gcc-aarch64-linux-gnu and qemu-user where apt-get exists."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch

from demi.model import native_build, native_kernels
from demi.model.quantize import dequantize_int4, quantize_int4, quantize_int8

CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"
DRIVER = Path(__file__).parent / "native" / "qmatmul_driver.c"
pytestmark = pytest.mark.skipif(
    not (shutil.which(CC) and shutil.which(QEMU)),
    reason=f"needs {CC} and {QEMU} (make test installs them with apt-get)",
)


@pytest.mark.parametrize("path", ["neon-dotprod", "neon"])
def test_arm_kernels_match_the_dequantized_reference(path, tmp_path):
    flags = next(p for p in native_kernels.PATHS if p.name == path).cflags
    exe = tmp_path / "driver"
    subprocess.run(
        [
            CC,
            "-O3",
            "-fopenmp",
            "-static",
            *flags,
            "-o",
            str(exe),
            str(DRIVER),
            *map(str, native_build.SOURCES),
            "-lm",
        ],
        check=True,
        capture_output=True,
    )
    torch.manual_seed(5)
    m, n, k, group = 3, 70, 256, 64
    x, w = torch.randn(m, k), torch.randn(n, k)
    q, scale = quantize_int8(w)
    q4, s4, z4 = quantize_int4(w, group)
    offset, scale4 = native_kernels.int4_offset(s4, z4), native_kernels.half(s4)  # (halves, as the kernels read)
    blob = struct.pack("<4q", m, n, k, group) + b"".join(
        t.contiguous().numpy().tobytes() for t in (x, q, scale, native_kernels.pack_q4(q4), scale4, offset)
    )
    (tmp_path / "in.bin").write_bytes(blob)
    run = subprocess.run(
        [QEMU, str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], capture_output=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    raw = (tmp_path / "out.bin").read_bytes()
    assert raw[:16].rstrip(b"\0").decode() == path
    y = torch.frombuffer(bytearray(raw[16:]), dtype=torch.float32).reshape(2, m, n)
    ref8 = x @ (q.float() * scale[:, None]).T
    ref4 = x @ dequantize_int4(q4, s4, z4).T
    err8 = ((y[0] - ref8).norm() / ref8.norm()).item()
    err4 = ((y[1] - ref4).norm() / ref4.norm()).item()
    weight_err8 = ((x @ w.T - ref8).norm() / ref8.norm()).item()
    assert err8 < min(0.01, weight_err8), err8
    assert err4 < 0.02, err4
