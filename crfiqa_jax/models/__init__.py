"""The networks and the maths they are trained with; imports nothing else of the package.

  iresnet  the iResNet backbones with the quality head, written once as a layer plan that
           the Flax model, the weight import and the ONNX writer all walk
  losses   ArcFace logits, CCS/NNCCS and the certainty ratio, smooth L1, the CR-FIQA and
           IG-FIQA losses, and the one L2 normalisation of the package
  conv     the convolution whose weight gradient is a matrix product per kernel tap

`from crfiqa_jax import models` gives the iResNet API (create_model, normalize, ...).
"""

from crfiqa_jax.models.iresnet import (ARCHS, BN_EPS, BN_MOMENTUM, QUALITY_HEAD, IResNet,
                                       IResNet18, IResNet34, IResNet50, IResNet100,
                                       IResNetTiny, Layer, PReLU, create_model,
                                       fc_kernel_order, layer_plan, normalize, torch_padding,
                                       walk)
from crfiqa_jax.models.losses import l2_normalize

__all__ = ["ARCHS", "BN_EPS", "BN_MOMENTUM", "QUALITY_HEAD", "IResNet", "IResNet18",
           "IResNet34", "IResNet50", "IResNet100", "IResNetTiny", "Layer", "PReLU",
           "create_model", "fc_kernel_order", "l2_normalize", "layer_plan", "normalize",
           "torch_padding", "walk"]
