"""The SA decoder's layout compiler: one generated ``Struct.unpack_from`` reader per attribute layout (pure).

The generated code is built from integers (attribute types and lengths) only, never from message
bytes; key bytes are skipped as pad bytes, never unpacked.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from monitor.wire import xfrm as X
from monitor.wire.events import (
    Mark,
    Offload,
    Replay,
    ReplayEsn,
)
from monitor.wire.sa_values import (
    _ALGO_FIELD,
    _ALGO_ICV_TYPES,
    _ALGOS,
    _ALGOS_ICV,
    _ENCAPS,
    _TAIL,
    _U32_FIELD,
    _algo_raw,
    _encap_raw,
    _new,
)

# --- layout specialisation ---------------------------------------------------------------------
#
# SAs of one fleet carry the same attributes with the same lengths (a dump of 10k AES-GCM SAs has
# one attribute layout). The first block of a layout is walked by ``_sa_attrs``; if all its
# attributes are valid, ``_compile_layout`` generates a function that reads the whole block with
# one ``Struct.unpack_from`` (key bytes are skipped as pad bytes, never unpacked). The next block of
# the same length is checked against the layout's nlattr headers (one more unpack and a tuple
# compare); on a match the generated function builds the fields, and returns None (so the block is
# walked the slow way, with its exact errors) when a value-dependent check fails: an algorithm key
# longer than its attribute, or an ESN bitmap of another length.

_LayoutBuild = Callable[[bytes, int, int], "tuple[Any, ...] | None"]
_Layout = tuple[Callable[[bytes, int], tuple[Any, ...]], tuple[int, ...], _LayoutBuild]
LAYOUTS: dict[int, list[_Layout]] = {}  # attribute block length -> candidate layouts
LAYOUTS_MAX = 256  # compilations ever (each costs an exec); then new shapes stay on the slow path
layouts_count = [0]

def compile_layout(size: int, shape: list[tuple[int, int]], esn: ReplayEsn | None) -> None:
    """Generate the fast reader for an attribute block of ``size`` bytes whose nlattr headers are
    ``shape`` [(nla_len, nla_type)], all already validated by ``monitor.wire.decode_sa._sa_attrs``."""
    fmt = ["="]
    sig_fmt = ["="]
    expected: list[int] = []
    code: list[str] = []
    fields: set[str] = set()
    i = 0
    for k, (alen, raw_type) in enumerate(shape):
        last = k == len(shape) - 1
        atype = raw_type & 0x3FFF
        n = alen - 4
        pad = 0 if last else ((alen + 3) & ~3) - alen
        expected += [alen, raw_type]
        sig_fmt.append("HH" if last else f"HH{n + pad}x")
        field = None
        if atype == X.XFRMA_LASTUSED:
            field, piece, used, nvals = "lastused", "Q", 8, 1
            code.append(f"lastused = v[{i}]")
        elif atype == X.XFRMA_REPLAY_VAL:
            field, piece, used, nvals = "replay", "3I", 12, 3
            code.append(f"replay = _new(Replay, v[{i}:{i + 3}])")
        elif atype == X.XFRMA_REPLAY_ESN_VAL:
            if esn is None:
                return
            bmp = len(esn.bmp)
            field, piece, used, nvals = "esn", f"6I{bmp}I", 24 + 4 * bmp, 6 + bmp
            code.append(f"if v[{i}] != {bmp}: return None")
            code.append(f"esn = _new(ReplayEsn, (v[{i + 1}], v[{i + 2}], v[{i + 3}], v[{i + 4}], v[{i + 5}], "
                        f"v[{i + 6}:{i + 6 + bmp}]))")
        elif atype in _ALGO_FIELD:
            hdr = 72 if atype in _ALGO_ICV_TYPES else 68
            field, piece, used, nvals = _ALGO_FIELD[atype], f"{hdr}s", hdr, 1
            cache = "_ALGOS_ICV" if hdr == 72 else "_ALGOS"
            code.append(f"a = {cache}.get(v[{i}]) or _algo_raw(v[{i}], {hdr == 72})")
            code.append(f"if {hdr} + ((a[1] + 7) >> 3) > {n}: return None")
            code.append(f"{field} = a")
        elif atype == X.XFRMA_ENCAP:
            field, piece, used, nvals = "encap", "24s", 24, 1
            code.append(f"encap = _ENCAPS[family == {X.AF_INET6}].get(v[{i}]) or _encap_raw(v[{i}], family)")
        elif atype == X.XFRMA_MARK:
            field, piece, used, nvals = "mark", "2I", 8, 2
            code.append(f"mark = _new(Mark, v[{i}:{i + 2}])")
        elif atype == X.XFRMA_OFFLOAD_DEV:
            field, piece, used, nvals = "offload", "iB", 5, 2
            code.append(f"offload = _new(Offload, v[{i}:{i + 2}])")
        elif atype == X.XFRMA_SA_DIR:
            field, piece, used, nvals = "sa_dir", "B", 1, 1
            code.append(f"sa_dir = v[{i}]")
        elif atype in _U32_FIELD:
            field, piece, used, nvals = _U32_FIELD[atype], "I", 4, 1
            code.append(f"{field} = v[{i}]")
        else:  # not an SA attribute (XFRMA_SA, SRCADDR, PAD, ...): skipped, as _sa_attrs does
            piece, used, nvals = "", 0, 0
        if field is not None:
            if field in fields or n < used:  # repeated (last one wins) or replaced-invalid: walk those
                return
            fields.add(field)
        fmt.append(f"4x{piece}{n - used + pad}x")
        i += nvals
    body = "\n    ".join(["v = unpack(data, q)", *code,
                          "return (" + ", ".join(f if f in fields else "None" for f in _TAIL) + ",)"])
    namespace: dict[str, Any] = {
        "unpack": struct.Struct("".join(fmt)).unpack_from, "_new": _new, "Replay": Replay, "Mark": Mark,
        "Offload": Offload, "ReplayEsn": ReplayEsn, "_ALGOS": _ALGOS, "_ALGOS_ICV": _ALGOS_ICV,
        "_algo_raw": _algo_raw, "_ENCAPS": _ENCAPS, "_encap_raw": _encap_raw,
    }
    exec(f"def build(data, q, family):\n    {body}\n", namespace)  # noqa: S102 - code built from ints only
    sig = struct.Struct("".join(sig_fmt)).unpack_from
    candidates = [c for c in LAYOUTS.get(size, ()) if c[1] != tuple(expected)]
    candidates.append((sig, tuple(expected), namespace["build"]))
    LAYOUTS[size] = candidates
    layouts_count[0] += 1


