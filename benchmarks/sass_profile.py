"""Summaries of ncu source pages (``ncu -i REP --page source --csv --print-source sass``).

    python benchmarks/sass_profile.py A_sass.csv.gz [B_sass.csv.gz ...]

For each file: warp-instructions executed by opcode family (spin loops included: a barrier
wait that retries executes its try-wait and branch again), stall samples by reason, and the
instructions with the most samples. Used to set our forward kernel beside cuDNN's at the same
size (benchmarks/NOTES.md, "Session 21").
"""

from __future__ import annotations

import collections
import csv
import gzip
import re
import sys

_OPCODE = re.compile(r"^(?:@!?U?P\w+\s+)?([A-Z0-9_]+)")
_FAMILIES = (
    ("HGMMA", "wgmma"),
    ("MUFU", "MUFU"),
    ("SYNCS", "barrier wait/arrive"),
    ("WARPGROUP", "wgmma fence/wait"),
    ("BAR", "named barrier"),
    ("UTMA", "TMA"),
    ("LDG", "global load"),
    ("ATOM", "global atomic"),
    ("RED", "global atomic"),
    ("LDS", "shared load"),
    ("STS", "shared store"),
    ("STSM", "shared store"),
    ("F2FP", "convert"),
    ("F2F", "convert"),
    ("FMUL", "fp32"),
    ("FADD", "fp32"),
    ("FFMA", "fp32"),
    ("FMNMX", "fp32"),
    ("FSEL", "select"),
    ("FSETP", "fp32 compare"),
    ("ISETP", "int compare"),
    ("BRA", "branch"),
)


def family(source: str) -> str:
    match = _OPCODE.match(source.strip())
    op = match.group(1) if match else "?"
    for prefix, name in _FAMILIES:
        if op.startswith(prefix):
            return name
    if op.startswith(("U", "R2UR", "S2UR")):
        return "uniform"
    if op.startswith(("I", "LOP", "SHF", "LEA", "MOV", "SEL", "PRMT", "S2R", "CS2R", "P2R", "R2P")):
        return "int/move"
    return "other"


def summarize(path: str) -> None:
    with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as f:
        rows = list(csv.reader(f))
    header, body = rows[1], rows[2:]
    col = {name: i for i, name in enumerate(header)}
    stalls = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]

    def number(row, name):
        try:
            return int(row[col[name]].replace(",", ""))
        except ValueError:
            return 0

    executed = collections.Counter()
    samples = collections.Counter()
    for row in body:
        executed[family(row[col["Source"]])] += number(row, "Instructions Executed")
        for s in stalls:
            samples[s] += number(row, s)
    total_exec, total_samples = sum(executed.values()), sum(samples.values())
    print(f"== {path}: {total_exec:,} warp-instructions, {total_samples:,} stall samples")
    for name, n in executed.most_common():
        print(f"  {name:22s} {n:>12,} {100 * n / total_exec:5.1f}%")
    print("  stall samples:")
    for name, n in samples.most_common(8):
        print(f"  {name:22s} {n:>12,} {100 * n / total_samples:5.1f}%")
    print("  top instructions (samples, executed, source):")
    top = sorted(body, key=lambda r: -number(r, "Warp Stall Sampling (All Samples)"))[:12]
    for row in top:
        print(
            f"  {number(row, 'Warp Stall Sampling (All Samples)'):>7,} "
            f"{number(row, 'Instructions Executed'):>10,}  {row[col['Source']].strip()[:70]}"
        )


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        summarize(arg)
