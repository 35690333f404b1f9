"""The IKE daemon's view (strongSwan over VICI), joined to the kernel's tunnels.

``records`` (pure) parses ``list-sas``/``list-conns`` answers into immutable records; ``rules`` (pure) turns
charon's log lines into reason codes; ``join`` (pure) matches them to the correlator's tunnel JSON;
``client`` runs the synchronous ``vici`` package in a thread of its own; ``view`` holds the latest
answers on the event loop and decorates the correlator's tunnel JSON with each tunnel's ``ike`` block.
"""
