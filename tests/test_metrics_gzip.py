"""/metrics honours Accept-Encoding: gzip (issue 15 item 2, in part): Prometheus sends it on every scrape.
A real server and raw HTTP requests (urllib does not decompress, so the bytes on the wire are checked)."""

from __future__ import annotations

import asyncio
import gzip
import urllib.request

from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from monitor.serve.config import Settings
from monitor.serve.handlers import HUB, accepts_gzip
from monitor.serve.web import create_app


def _get(url: str, accept: str | None) -> tuple[dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Accept-Encoding": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return dict(r.headers), r.read()


def test_accept_encoding_parsing() -> None:
    assert accepts_gzip("gzip")
    assert accepts_gzip("deflate, GZIP;q=0.5")
    assert accepts_gzip("*")
    assert not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("identity")
    assert not accepts_gzip("")


async def test_metrics_is_gzipped_when_asked_and_equal_when_decompressed() -> None:
    app = create_app(Settings(source="simulate", tunnels=40, port=0))
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        for _ in range(100):
            if len(app[HUB].view.tunnel_ids()) >= 40:
                break
            await asyncio.sleep(0.05)
        url = str(server.make_url("/metrics"))
        plain_h, plain = await asyncio.to_thread(_get, url, None)
        gz_h, gz = await asyncio.to_thread(_get, url, "gzip")
        refused_h, _ = await asyncio.to_thread(_get, url, "gzip;q=0, identity")
    finally:
        await server.close()
    assert "Content-Encoding" not in plain_h
    assert "Content-Encoding" not in refused_h
    assert gz_h["Content-Encoding"] == "gzip"
    text = gzip.decompress(gz).decode()
    assert len(gz) * 5 < len(plain), (len(gz), len(plain))
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"ipsec_tunnel_bytes", "ipsec_tunnels", "ipsec_tunnel_state"} <= names
    # the same families and tunnels as the uncompressed body (values and states may move between scrapes)
    def families(body: str) -> dict[str, set[str | None]]:
        return {f.name: {s.labels.get("id") for s in f.samples} for f in text_string_to_metric_families(body)
                if f.name != "ipsec_tunnel_hard_expiry_seconds"}

    assert families(text) == families(plain.decode())


def test_gzip_goes_through_isal_and_is_standard_gzip() -> None:
    """Issue 15: the scrape's gzip runs through ISA-L (a dependency; ~3.7x less CPU per byte than zlib level 1 in
    bench/RESULTS.md), and what it writes is one standard gzip stream that the stdlib reads back."""
    from monitor.serve import metrics_text

    assert metrics_text.DEFLATE == "isal.isal_zlib"
    body = b"".join(f'ipsec_tunnel_rekeys_total{{id="default:{i}:192.0.2.1-198.51.100.{i % 250}"}} {i}\n'.encode()
                    for i in range(5000))
    z = metrics_text.compressor()
    assert gzip.decompress(z.compress(body) + z.flush()) == body
