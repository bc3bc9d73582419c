"""Serving a trained model: reading and writing every kind of model path, running it on an
engine, streaming images through it, scoring, exporting. Imports data and models.

  model_io        every model path, read and written (workdir, exported dir, .pth, .onnx)
  pth             PyTorch weight files read safely, torch optional
  torch_import    released PyTorch weights → Flax variables, by the layer plan
  onnx_graph      the ONNX graph written from the layer plan; checked against JAX
  onnx_predictor  an ONNX file run by onnxruntime
  inference       the Flax predictor and the one streaming path (stream, extract)
  engines         which engine runs a forward; load_predictor for any model path
  calibration     the optional 0–100 score
  scorer          `Scorer`, the Python API for in-memory images
  score           `python -m crfiqa_jax.score`
  export          `python -m crfiqa_jax.export` (ONNX, StableHLO)
  convert         `python -m crfiqa_jax.convert` (.pth → exported directory)
"""
