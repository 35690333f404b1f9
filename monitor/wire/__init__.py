"""The kernel's XFRM netlink wire format, pure: bytes in, immutable events out, and back.

Nothing here touches a socket, a clock or an event loop (``tests/test_layout.py`` checks it).
"""
