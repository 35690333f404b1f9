"""libreswan's view: ``whack --showstates`` / ``--trafficstatus`` as the IKE view's records (parsing PURE; the
client runs ``whack`` in a thread).

libreswan has no event socket the monitor could follow, and no child names (a connection is one IKE SA and
its Child SAs). ``whack`` prints one line per state, optionally prefixed with a three-digit code (4.x:
``000 ``), e.g. (libreswan 4.10)::

    000 #1: "net":500 STATE_V2_ESTABLISHED_IKE_SA (established IKE SA); REKEY in 27785s; newest; idle;
    000 #2: "net":500 STATE_V2_ESTABLISHED_CHILD_SA (established Child SA); REKEY in 28031s; IKE SA #1; ...
    000 #2: "net" esp.5ac1f2d8@192.0.2.2 esp.c08a71e3@192.0.2.1 tun.0@192.0.2.2 tun.0@192.0.2.1 Traffic: ...
    006 #2: "net", type=ESP, add_time=1764820000, inBytes=840, outBytes=840, maxBytes=2^63B, id='@b'

:func:`parse_whack` turns them into the same :class:`~monitor.ike.records.IkeSa` / ``ChildSa`` records VICI
gives, so the join (by SPI: whack prints no reqid), the ``ike`` blocks, ``detail.ike``, ``tail``, ``check``
and the ``conn``/``child`` labels work unchanged; ``child`` is the connection's name. Not available from
libreswan: the configured connections (no ``list-conns``, hence no configured-but-down tunnels and no
configuration hints), the reasons of failures (no log events), proposals and NAT details.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from monitor.ike.client import Listing, ViciStatus
from monitor.ike.records import ChildSa, IkeSa

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CTL", "WhackClient", "find_whack", "parse_whack"]

#: pluto's control socket (``--rundir``'s default /run/pluto).
DEFAULT_CTL = "/run/pluto/pluto.ctl"
#: Where Debian and Fedora put the binary (``ipsec whack`` runs it from there).
WHACK_PATHS = ("/usr/libexec/ipsec/whack", "/usr/lib/ipsec/whack")

_HEAD = r'^(?:\d{3} )?#(\d+): "([^"]+)"(?:\[\d+\])?'
_STATE = re.compile(_HEAD + r'(?::\d+)? (STATE_\S+)(.*)$')
_SPI = re.compile(r"\b(?:esp|ah)\.([0-9a-fA-F]+)@")
_PARENT = re.compile(r"(?:IKE SA|isakmp)\s?#(\d+)")
_TRAFFIC = re.compile(_HEAD + r", type=(?:ESP|AH).*?(?:, id='([^']*)')?$")


def _child(n: int, conn: str, state: str | None, spis: Sequence[int]) -> ChildSa:
    return ChildSa(
        key=f"{conn}-{n}", name=conn, uniqueid=n, reqid=None, state=state, mode=None, protocol="ESP", encap=False,
        spi_out=spis[0] if spis else None, spi_in=spis[1] if len(spis) > 1 else None,
        if_id_in=None, if_id_out=None, mark_in=None, mark_out=None, encr=None, integ=None, dh_group=None,
        esn=False, bytes_in=None, bytes_out=None, packets_in=None, packets_out=None, install_time=None,
        rekey_time=None, life_time=None, local_ts=(), remote_ts=())


def _ike(n: int | None, conn: str, state: str | None, remote_id: str | None,
         children: tuple[ChildSa, ...]) -> IkeSa:
    return IkeSa(conn=conn, uniqueid=n, version=2, state=state, local_host=None, remote_host=None, local_id=None,
                 remote_id=remote_id, initiator=False, nat_local=False, nat_remote=False, encr=None, integ=None,
                 prf=None, dh_group=None, established=None, rekey_time=None, reauth_time=None, children=children)


def parse_whack(showstates: str, trafficstatus: str = "") -> list[IkeSa]:
    """The IKE SAs (with their Child SAs) of ``whack --showstates`` (and the peer ids of ``--trafficstatus``).

    A state with SPIs (``esp.<spi>@<addr>``) is a Child SA, shown ``INSTALLED`` when its state name says
    established (``STATE_V2_ESTABLISHED_CHILD_SA``, IKEv1 ``STATE_QUICK_*`` 2), else with the state name;
    it belongs to the IKE SA it names (``IKE SA #1`` / ``isakmp#1``), else to its connection's newest one.
    Lines that match nothing are skipped: another version's extra lines cannot break it.
    """
    names: dict[int, tuple[str, str | None, int | None]] = {}  # state -> (conn, state name, parent)
    spis: dict[int, list[int]] = {}
    for line in showstates.splitlines():
        if (m := _STATE.match(line)) is not None:
            pm = _PARENT.search(m[4])
            names[int(m[1])] = (m[2], m[3], int(pm[1]) if pm else None)
        elif (h := re.match(_HEAD, line)) is not None and (found := _SPI.findall(line)):
            spis.setdefault(int(h[1]), []).extend(int(s, 16) for s in found)
    ids = {int(m[1]): m[3] for line in trafficstatus.splitlines() if (m := _TRAFFIC.match(line)) and m[3]}
    children: dict[int | None, list[ChildSa]] = {}
    ikes: dict[int, tuple[str, str | None]] = {}
    for n, (conn, state, parent) in sorted(names.items()):
        if n in spis or (state and ("CHILD" in state or "IPSEC" in state or "QUICK" in state)):
            up = state is not None and ("ESTABLISHED_CHILD" in state or state in ("STATE_QUICK_I2", "STATE_QUICK_R2"))
            owner = parent if parent in names else next(
                (i for i in sorted(names, reverse=True) if names[i][0] == conn and i not in spis and i != n), None)
            children.setdefault(owner, []).append(_child(n, conn, "INSTALLED" if up else state, spis.get(n, ())))
        else:
            ikes[n] = (conn, state)
    out = [_ike(n, conn, state, next((ids[c.uniqueid] for c in children.get(n, ()) if c.uniqueid in ids), None),
                tuple(children.get(n, ()))) for n, (conn, state) in ikes.items()]
    for orphan in children.get(None, ()):  # a Child SA whose IKE SA is not listed (IKEv1 after a delete ...)
        out.append(_ike(None, orphan.name, None, ids.get(orphan.uniqueid or -1), (orphan,)))
    return out


def find_whack() -> list[str] | None:
    """The command that runs whack: ``whack`` on PATH, libreswan's libexec copy, or ``ipsec whack``."""
    if (w := shutil.which("whack")) is not None:
        return [w]
    for p in WHACK_PATHS:
        if shutil.which(p) is not None:
            return [p]
    return None


class WhackClient:
    """Reads ``whack --showstates`` and ``--trafficstatus`` every ``refresh`` seconds in a thread; ``deliver``
    gets a :class:`~monitor.ike.client.ViciStatus` when reading starts or stops working (one log line per
    outage) and a :class:`~monitor.ike.client.Listing` (no connections) after every read, on the loop.
    The same interface as :class:`~monitor.ike.client.ViciClient` (``start(loop)``, ``stop()``)."""

    def __init__(self, ctl: str | None, deliver: Callable[[object], None], *, refresh: float = 5.0,
                 timeout: float = 5.0, command: Sequence[str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.ctl = ctl or DEFAULT_CTL
        self.deliver = deliver
        self.refresh = refresh
        self.timeout = timeout
        self.command = list(command) if command is not None else find_whack()
        self.clock = clock
        self.connects = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: str | None = "not read yet"
        self._logged = False  # the current outage has been logged (once)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the thread; updates go to ``loop``."""
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="monitor-whack", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (a running whack is given ``timeout`` to end)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout + self.timeout)

    def _send(self, item: object) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.deliver, item)

    def _whack(self, what: str) -> str:
        if self.command is None:
            raise FileNotFoundError("no whack command (libreswan not installed?)")
        p = subprocess.run([*self.command, "--ctlsocket", self.ctl, what], capture_output=True, text=True,
                           timeout=self.timeout, check=False)
        if p.returncode != 0:
            msg = (p.stderr or p.stdout).strip().splitlines()
            raise OSError(msg[-1] if msg else f"whack exited with {p.returncode}")
        return p.stdout

    def read_once(self) -> Listing:
        """One read (raises OSError, subprocess.TimeoutExpired)."""
        states = self._whack("--showstates")
        traffic = self._whack("--trafficstatus")
        return Listing(tuple(parse_whack(states, traffic)), (), self.clock())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listing = self.read_once()
            except (OSError, subprocess.SubprocessError) as exc:
                msg = f"libreswan's whack on {self.ctl} failed: {exc}"
                if msg != self._error:
                    if not self._logged:
                        log.warning("IKE view unavailable, kernel-only view (retrying): %s", msg)
                        self._logged = True
                    self._error = msg
                    self._send(ViciStatus(False, self.ctl, msg, self.clock()))
            else:
                if self._error is not None:
                    self.connects += 1
                    log.info("IKE view: reading libreswan's pluto at %s", self.ctl)
                    self._error, self._logged = None, False
                    self._send(ViciStatus(True, self.ctl, None, self.clock()))
                self._send(listing)
            self._stop.wait(self.refresh)
