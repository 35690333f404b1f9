"""Proof that our struct layouts match the kernel's: compile a C program against the system's
``/usr/include/linux/xfrm.h`` with gcc, print ``sizeof``/``offsetof`` and enum values, and compare
them with ``monitor.wire.xfrm`` and with the offsets the golden builders in ``tests/golden.py`` use.

Skipped (with the reason) when gcc or the kernel headers (Debian: linux-libc-dev) are missing.
Attributes newer than the installed header (SA_DIR, NAT_KEEPALIVE_INTERVAL, SA_PCPU appeared in
6.10-6.13) cannot be checked this way; they follow the enum order quoted in ``tests/golden.py``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from monitor.wire import xfrm as X

HEADER = Path("/usr/include/linux/xfrm.h")

_SIZES = {
    "xfrm_selector": 56,
    "xfrm_id": 24,
    "xfrm_lifetime_cfg": X.LIFETIME_CFG.size,
    "xfrm_lifetime_cur": X.LIFETIME_CUR.size,
    "xfrm_stats": 12,
    "xfrm_usersa_info": X.USERSA_INFO.size,
    "xfrm_usersa_id": X.USERSA_ID.size,
    "xfrm_user_expire": X.USER_EXPIRE_SIZE,
    "xfrm_userpolicy_info": X.USERPOLICY_INFO.size,
    "xfrm_userpolicy_id": X.USERPOLICY_ID.size,
    "xfrm_user_polexpire": X.USER_POLEXPIRE_SIZE,
    "xfrm_user_tmpl": X.USER_TMPL.size,
    "xfrm_user_acquire": X.USER_ACQUIRE_SIZE,
    "xfrm_aevent_id": X.AEVENT_ID.size,
    "xfrm_user_mapping": X.USER_MAPPING.size + X.MAPPING_PORTS.size,
    "xfrm_user_report": X.USER_REPORT_SIZE,
    "xfrm_userpolicy_type": X.USERPOLICY_TYPE.size,
    "xfrm_encap_tmpl": X.ENCAP_TMPL.size,
    "xfrm_user_offload": X.USER_OFFLOAD.size,
    "xfrm_replay_state": X.REPLAY.size,
    "xfrm_replay_state_esn": X.REPLAY_ESN.size,
    "xfrm_algo": X.ALGO_HDR.size,
    "xfrm_algo_auth": X.ALGO_HDR2.size,
    "xfrm_algo_aead": X.ALGO_HDR2.size,
    "xfrm_mark": X.MARK.size,
    "xfrmu_sadhinfo": X.SADHINFO.size,
    "xfrm_usersa_flush": 1,
}

# (struct, field) -> the offset monitor.wire.xfrm / tests/golden.py rely on
_OFFSETS = {
    ("xfrm_selector", "dport"): 32,
    ("xfrm_selector", "sport"): 36,
    ("xfrm_selector", "family"): 40,
    ("xfrm_selector", "prefixlen_d"): 42,
    ("xfrm_selector", "proto"): 44,
    ("xfrm_selector", "ifindex"): 48,
    ("xfrm_selector", "user"): 52,
    ("xfrm_usersa_info", "id"): 56,
    ("xfrm_usersa_info", "saddr"): 80,
    ("xfrm_usersa_info", "lft"): 96,
    ("xfrm_usersa_info", "curlft"): 160,
    ("xfrm_usersa_info", "stats"): 192,
    ("xfrm_usersa_info", "seq"): 204,
    ("xfrm_usersa_info", "reqid"): 208,
    ("xfrm_usersa_info", "family"): 212,
    ("xfrm_usersa_info", "mode"): 214,
    ("xfrm_usersa_info", "replay_window"): 215,
    ("xfrm_usersa_info", "flags"): 216,
    ("xfrm_id", "spi"): 16,
    ("xfrm_id", "proto"): 20,
    ("xfrm_usersa_id", "spi"): 16,
    ("xfrm_usersa_id", "family"): 20,
    ("xfrm_usersa_id", "proto"): 22,
    ("xfrm_user_expire", "hard"): 224,
    ("xfrm_userpolicy_info", "lft"): 56,
    ("xfrm_userpolicy_info", "curlft"): 120,
    ("xfrm_userpolicy_info", "priority"): 152,
    ("xfrm_userpolicy_info", "index"): 156,
    ("xfrm_userpolicy_info", "dir"): 160,
    ("xfrm_userpolicy_info", "action"): 161,
    ("xfrm_userpolicy_info", "flags"): 162,
    ("xfrm_userpolicy_info", "share"): 163,
    ("xfrm_userpolicy_id", "index"): 56,
    ("xfrm_userpolicy_id", "dir"): 60,
    ("xfrm_user_polexpire", "hard"): 168,
    ("xfrm_user_tmpl", "family"): 24,
    ("xfrm_user_tmpl", "saddr"): 28,
    ("xfrm_user_tmpl", "reqid"): 44,
    ("xfrm_user_tmpl", "mode"): 48,
    ("xfrm_user_tmpl", "share"): 49,
    ("xfrm_user_tmpl", "optional"): 50,
    ("xfrm_user_tmpl", "aalgos"): 52,
    ("xfrm_user_tmpl", "ealgos"): 56,
    ("xfrm_user_tmpl", "calgos"): 60,
    ("xfrm_user_acquire", "saddr"): 24,
    ("xfrm_user_acquire", "sel"): 40,
    ("xfrm_user_acquire", "policy"): 96,
    ("xfrm_user_acquire", "aalgos"): 264,
    ("xfrm_user_acquire", "seq"): 276,
    ("xfrm_aevent_id", "saddr"): 24,
    ("xfrm_aevent_id", "flags"): 40,
    ("xfrm_aevent_id", "reqid"): 44,
    ("xfrm_user_mapping", "reqid"): 24,
    ("xfrm_user_mapping", "old_saddr"): 28,
    ("xfrm_user_mapping", "new_saddr"): 44,
    ("xfrm_user_mapping", "old_sport"): 60,
    ("xfrm_user_mapping", "new_sport"): 62,
    ("xfrm_user_report", "sel"): 4,
    ("xfrm_userpolicy_type", "reserved1"): 2,
    ("xfrm_userpolicy_type", "reserved2"): 4,
    ("xfrm_encap_tmpl", "encap_sport"): 2,
    ("xfrm_encap_tmpl", "encap_dport"): 4,
    ("xfrm_encap_tmpl", "encap_oa"): 8,
    ("xfrm_user_offload", "flags"): 4,
    ("xfrm_algo", "alg_key_len"): 64,
    ("xfrm_algo", "alg_key"): X.ALGO_KEY_OFFSET[X.XFRMA_ALG_CRYPT],
    ("xfrm_algo_auth", "alg_trunc_len"): 68,
    ("xfrm_algo_auth", "alg_key"): X.ALGO_KEY_OFFSET[X.XFRMA_ALG_AUTH_TRUNC],
    ("xfrm_algo_aead", "alg_icv_len"): 68,
    ("xfrm_algo_aead", "alg_key"): X.ALGO_KEY_OFFSET[X.XFRMA_ALG_AEAD],
    ("xfrm_replay_state_esn", "bmp"): 24,
}

# enum values in the header that monitor.wire.xfrm must agree with (present in 6.1 headers and later)
_ENUMS = {
    name: getattr(X, name)
    for name in dir(X)
    if (name.startswith(("XFRM_MSG_", "XFRMA_", "XFRMNLGRP_")))
    and name not in {"XFRMA_SA_DIR", "XFRMA_NAT_KEEPALIVE_INTERVAL", "XFRMA_SA_PCPU"}
}


@pytest.fixture(scope="module")
def kernel_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Compile and run the probe; returns {"sizeof xfrm_x": n, "offsetof xfrm_x.f": n, "enum NAME": n}."""
    gcc = shutil.which("gcc")
    if gcc is None or not HEADER.exists():
        pytest.skip("needs gcc and /usr/include/linux/xfrm.h (apt-get install gcc linux-libc-dev)")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/xfrm.h>", "int main(void) {"]
    for struct_name in _SIZES:
        lines.append(f'printf("sizeof {struct_name} %zu\\n", sizeof(struct {struct_name}));')
    for struct_name, field in _OFFSETS:
        lines.append(
            f'printf("offsetof {struct_name}.{field} %zu\\n", offsetof(struct {struct_name}, {field}));'
        )
    for name in _ENUMS:
        lines.append(f'printf("enum {name} %d\\n", (int){name});')
    lines += ["return 0;", "}"]
    work = tmp_path_factory.mktemp("layout")
    src = work / "probe.c"
    src.write_text("\n".join(lines) + "\n")
    exe = work / "probe"
    subprocess.run([gcc, "-o", str(exe), str(src)], check=True, capture_output=True, timeout=120)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=30).stdout
    result = {}
    for line in out.splitlines():
        kind, key, value = line.split()
        result[f"{kind} {key}"] = int(value)
    return result


def test_struct_sizes_match_gcc(kernel_layout: dict[str, int]) -> None:
    """Every struct.Struct in monitor.wire.xfrm has the size gcc gives the kernel struct."""
    ours = {f"sizeof {k}": v for k, v in _SIZES.items()}
    theirs = {k: v for k, v in kernel_layout.items() if k.startswith("sizeof ")}
    assert theirs == ours


def test_field_offsets_match_gcc(kernel_layout: dict[str, int]) -> None:
    """Every field offset the codec and the golden builders use is the one gcc computes."""
    ours = {f"offsetof {s}.{f}": v for (s, f), v in _OFFSETS.items()}
    theirs = {k: v for k, v in kernel_layout.items() if k.startswith("offsetof ")}
    assert theirs == ours


def test_enum_values_match_header(kernel_layout: dict[str, int]) -> None:
    """Message types, attribute types and multicast groups in monitor.wire.xfrm equal the header's enums."""
    ours = {f"enum {k}": v for k, v in _ENUMS.items()}
    theirs = {k: v for k, v in kernel_layout.items() if k.startswith("enum ")}
    assert len(ours) > 60
    assert theirs == ours
