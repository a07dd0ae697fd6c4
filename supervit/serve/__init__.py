"""Serving one SuperViT over HTTP (Ray Serve) with the operating point chosen per batch from the load.

``policy`` (pure Python: the latency table of profiled batch sizes, the calibration, the choice of batch size and
operating point), ``batcher`` (each replica's own queue), ``inputs`` (request bodies to model inputs), ``replica``
(the Ray Serve deployment), ``app`` (profiles and settings prepared before Ray starts), ``server`` (a local Ray and
Serve, started and stopped). Command line: ``python -m supervit.serve --help``.
"""
