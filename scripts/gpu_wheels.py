"""Prepare what scripts/gpu_check.py needs on a GPU machine that has no network, under .whl/.

    python scripts/gpu_wheels.py          # .whl/onnxruntime_gpu_sm90.tar.xz and .whl/torch_pruning-*.whl

The GPU machine's image has PyTorch (CUDA 13) but neither torch-pruning nor onnxruntime-gpu, and one
call carries at most 64 MiB. The onnxruntime-gpu wheel is 244 MiB: its CUDA provider holds kernels
for seven GPU generations (218 MiB of fatbins: sm_75, 80, 86, 89, 90, 100/120). This script keeps the
package but zeroes the machine code of every generation except --arch (the lent H100/H200 are sm_90;
a generation the GPU does not run is never loaded, so nothing else changes), drops the C-API library
the Python module does not load, and packs the rest with xz: 58 MiB, which travels in one call.
Unpack it into a directory on PYTHONPATH (the command is in gpu_check.py's docstring).
"""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FATBIN_MAGIC = 0xBA55ED50
CUBIN = 2  # fatbin entry kind: 1 is PTX, 2 an ELF cubin
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def download(requirement: str, dest: Path, python: str) -> Path:
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", python,
         "--implementation", "cp", *platform_args, "-d", str(dest), requirement],
        check=True,
    )  # fmt: skip
    name = requirement.split("=")[0].replace("-", "_")
    return max(dest.glob(f"{name}-*.whl"), key=lambda p: p.stat().st_mtime)


def section(path: Path, name: str) -> tuple[int, int]:
    """File offset and size of an ELF section, read with readelf."""
    listing = subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        fields = line.replace("[ ", "[").split()
        if name in fields:
            i = fields.index(name)
            return int(fields[i + 3], 16), int(fields[i + 4], 16)
    raise SystemExit(f"{path} has no {name} section")


def keep_one_arch(path: Path, arch: int) -> tuple[int, int]:
    """Zero the payload of every cubin in the library's fatbins that is not for sm_`arch`; returns
    (bytes zeroed, cubins kept). The fatbin headers and layout stay as they were."""
    data = bytearray(path.read_bytes())
    start, size = section(path, ".nv_fatbin")
    pos, end, zeroed, kept = start, start + size, 0, 0
    while pos < end:
        magic, _, header, fat_size = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:  # alignment padding between fatbins
            pos += 8
            continue
        entry, entries_end = pos + header, pos + header + fat_size
        while entry < entries_end:
            kind, _, entry_header, padded = struct.unpack_from("<HHII", data, entry)
            sm = struct.unpack_from("<I", data, entry + 28)[0]
            if kind == CUBIN and sm != arch:
                data[entry + entry_header : entry + entry_header + padded] = bytes(padded)
                zeroed += padded
            elif kind == CUBIN:
                kept += 1
            entry += entry_header + padded
        pos = entries_end
    path.write_bytes(bytes(data))
    return zeroed, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnxruntime-gpu", default="onnxruntime-gpu==1.31.1")
    parser.add_argument("--torch-pruning", default="torch-pruning==1.6.1")
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python")
    parser.add_argument("--arch", type=int, default=90, help="the GPU generation kept (H100 and H200: 90)")
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl")
    args = parser.parse_args()
    args.dest.mkdir(exist_ok=True)
    download(args.torch_pruning, args.dest, args.python)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download(args.onnxruntime_gpu, Path(tmp), args.python)
        tree = Path(tmp) / "tree"
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(tree)
        capi = tree / "onnxruntime" / "capi"
        for library in capi.glob("libonnxruntime.so*"):  # the C API; the Python module does not load it
            library.unlink()
        zeroed, kept = keep_one_arch(capi / "libonnxruntime_providers_cuda.so", args.arch)
        target = args.dest / f"onnxruntime_gpu_sm{args.arch}.tar.xz"
        with tarfile.open(target, "w:xz", preset=9) as packed:
            for item in sorted(tree.iterdir()):
                packed.add(item, arcname=item.name)
    mib, other = target.stat().st_size / 2**20, zeroed / 2**20
    print(f"{target}: {mib:.1f} MiB ({other:.0f} MiB of other GPUs' code zeroed, {kept} sm_{args.arch} cubins kept)")


if __name__ == "__main__":
    main()
