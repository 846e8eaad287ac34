"""Per-loop instruction mix of Mosaic GPU kernels, from their PTX or SASS.

Mosaic GPU compiles inside the CUDA PJRT plugin, so PTX comes from the GPU machine
(``MOSAIC_GPU_DUMP_PTX=1``, e.g. around ``benchmarks/ptxas_backward.py``); ptxas runs here:

    python benchmarks/sass_loops.py split DUMP.log OUT_DIR   # one k<i>.ptx per kernel
    ptxas -arch=sm_90a -v OUT_DIR/k3.ptx -o k3.cubin        # spills, as on the GPU machine
    cuobjdump -sass k3.cubin > k3.sass                        # on the GPU machine (not here)
    python benchmarks/sass_loops.py loops k3.sass             # per-loop counts

``loops`` lists every backward branch whose body has 50-1300 instructions (the step loops; the
barrier-retry stubs ptxas puts at the end of a kernel make longer false "loops") with the
instructions that matter for the backward: spills (STL/LDL), wgmmas, compares, selects, MUFU.
"""

from __future__ import annotations

import pathlib
import re
import sys

_INSTR = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH = re.compile(r"BRA\s+(?:\S+\s+)?0x([0-9a-f]+)")
_COUNTED = ("STL", "LDL", "HGMMA", "ISETP", "FSEL", "MUFU")


def split_ptx(dump: pathlib.Path, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Writes each PTX module of a ``MOSAIC_GPU_DUMP_PTX=1`` log to ``out_dir/k<i>.ptx``."""
    lines = dump.read_text().split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith(".version")]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        chunk = lines[start:end]
        last = max(i for i, line in enumerate(chunk) if line.strip() == "}")
        path = out_dir / f"k{n}.ptx"
        path.write_text("\n".join(chunk[: last + 1]) + "\n")
        paths.append(path)
    return paths


def loop_stats(sass: pathlib.Path) -> list[dict]:
    """One dict per step loop of a ``cuobjdump -sass`` listing (see the module doc)."""
    instrs = [
        (int(m.group(1), 16), m.group(2))
        for m in map(_INSTR.match, sass.read_text().split("\n"))
        if m
    ]
    rows = []
    for addr, text in instrs:
        m = _BRANCH.search(text)
        if not m or int(m.group(1), 16) >= addr:
            continue
        lo = int(m.group(1), 16)
        body = [t for a, t in instrs if lo <= a <= addr]
        if 50 <= len(body) <= 1300:
            counts = {op: sum(op in t for t in body) for op in _COUNTED}
            rows.append(dict(start=hex(lo), end=hex(addr), instructions=len(body), **counts))
    return rows


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[0] == "split":
        for path in split_ptx(pathlib.Path(argv[1]), pathlib.Path(argv[2])):
            print(path)
    elif len(argv) == 2 and argv[0] == "loops":
        for row in loop_stats(pathlib.Path(argv[1])):
            print(" ".join(f"{k}={v}" for k, v in row.items()))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
