"""The pure correlator: SA lifecycle events and an explicit ``now`` in, per-tunnel health out.

Nothing here touches a socket, a clock or an event loop (``tests/test_layout.py`` checks it).
"""
