"""The fast GPU engine: static-shape forwards, CUDA graphs, GPU tree building, one host sync
per round. `FastDecoder` has the same streaming interface as `jetspec_core.decoder.Decoder`."""
from .runner import BUCKETS, FastDecoder, bucket_for

__all__ = ["BUCKETS", "FastDecoder", "bucket_for"]
