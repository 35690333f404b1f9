"""monitor: a high-throughput IPsec (XFRM) tunnel health monitor for Linux."""

__version__ = "0.1.0"
