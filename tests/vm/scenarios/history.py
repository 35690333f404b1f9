"""Key check of the history scenario, run on the host before its folder is redacted (tests/vm/conftest.py).

The scenario polled ``ip xfrm state`` (keys included) every second into ``xfrm-keys.txt``, so every SA
generation's keys are known. None of them may appear, raw or as hex, in what the monitor wrote: the history
database, its REST answers, its logs. Only counts and file names go to ``keys-check.txt``.
"""

from __future__ import annotations

import re
from pathlib import Path

OUTPUTS = ("history.sqlite3", "before-tunnels.json", "before-healthz.json", "after-tunnels.json",
           "after-healthz.json", "after-events.json", "history.json", "final-events.json", "serve-1.log",
           "serve-2.log")


def before_sanitize(rw: Path) -> None:
    raw = rw / "xfrm-keys.txt"
    text = raw.read_text(errors="replace") if raw.exists() else ""
    keys = {bytes.fromhex(h) for h in re.findall(r"0x([0-9a-f]{32,})", text)}
    if not keys:  # already redacted (MONITOR_VM_REUSE of a judged folder): keep the earlier result
        return
    found = []
    present = [n for n in OUTPUTS if (rw / n).exists()]
    for name in present:
        data = (rw / name).read_bytes()
        hits = sum(1 for k in keys if k in data or k.hex().encode() in data.lower())
        if hits:
            found.append(f"{name}: {hits} of {len(keys)} keys")
    (rw / "keys-check.txt").write_text(f"keys {len(keys)}\nchecked {' '.join(present)}\nfound {len(found)}\n"
                                       + "".join(f"  {line}\n" for line in found))
