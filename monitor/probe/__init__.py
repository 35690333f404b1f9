"""The keepalive prober: pure decisions (``prober``) and the I/O shell that sends probes (``runner``)."""
