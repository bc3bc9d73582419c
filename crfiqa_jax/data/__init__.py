"""Face data: the record format, codecs, converters from what users have, face detection
and alignment, image sources, and `prepare`. Imports nothing of the package above it.

  records     the FaceRecords format (a TFDS builder writing ArrayRecord) and its reader
  codecs      image decoding and encoding, the resize policy, image file extensions
  pairs       verification pairs of a split (the one reader of pairs)
  sources     images by index for scoring (files, record splits, arrays)
  recordio    insightface's MXNet RecordIO, without mxnet
  converters  insightface .rec/.idx, image folders and verification .bin → records
  celeba      CelebA-layout photos → a training split and held-out pairs
  synthetic   the demo's synthetic faces
  faces       MTCNN detection, the choice of a face, ArcFace alignment
  prepare     `python -m crfiqa_jax.prepare`
"""

from crfiqa_jax.data.codecs import decode_image, encode_jpeg
from crfiqa_jax.data.pairs import PairSet, open_pairs, read_pairs
from crfiqa_jax.data.records import (FaceDataset, RecordSource, open_dataset, read_info,
                                     write_records)

__all__ = ["FaceDataset", "PairSet", "RecordSource", "decode_image", "encode_jpeg",
           "open_dataset", "open_pairs", "read_info", "read_pairs", "write_records"]
