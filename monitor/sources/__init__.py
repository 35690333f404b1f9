"""Where datagrams come from: the kernel (one netlink socket per netns), a capture, or the simulator.

Every source yields :mod:`monitor.sources.items` (``Datagram`` | ``Control``). Only ``kernel`` and ``netns``
import pyroute2, and only when imported themselves: this package's face imports nothing.
"""
