"""Face record datasets: writing, reading and converters."""

from crfiqa_jax.data.records import (FaceDataset, RecordSource, decode_image, encode_jpeg,
                                     open_dataset, open_pairs, read_info, write_records)

__all__ = ["FaceDataset", "RecordSource", "decode_image", "encode_jpeg", "open_dataset", "open_pairs",
           "read_info", "write_records"]
