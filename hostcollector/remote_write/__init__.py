"""Prometheus remote write 1.0: series from each snapshot, queued on disk per endpoint, sent
oldest first (protocol.py encodes, queue.py persists, sender.py delivers, writer.py wires)."""
