"""A PyTorch iResNet in the released CR-FIQA layout (its backbones/iresnet.py), written for the tests and
benchmarks: the reference that converted weights must reproduce. Module names match the
released state_dict keys (conv1, bn1, prelu, layer1..4 with bn1/conv1/bn2/prelu/conv2/bn3/
downsample.{0,1}, bn2, fc, features, qs)."""

import torch
from torch import nn

STAGES = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3), "iresnet50": (3, 4, 14, 3),
          "iresnet100": (3, 13, 30, 3), "iresnet_tiny": (1, 1, 1, 1)}


class Block(nn.Module):

  def __init__(self, cin, cout, stride, downsample):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
    self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
    self.prelu = nn.PReLU(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
    self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                    nn.BatchNorm2d(cout, eps=1e-5)) if downsample else None

  def forward(self, x):
    y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
    return y + (self.downsample(x) if self.downsample is not None else x)


class TorchIResNet(nn.Module):

  def __init__(self, stages, widths=(64, 128, 256, 512), emb=512, image_size=112):
    super().__init__()
    self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
    self.prelu = nn.PReLU(widths[0])
    cin = widths[0]
    for i, (n, w) in enumerate(zip(stages, widths)):
      blocks = [Block(cin if j == 0 else w, w, 2 if j == 0 else 1, j == 0) for j in range(n)]
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
      cin = w
    self.bn2 = nn.BatchNorm2d(widths[-1], eps=1e-5)
    self.dropout = nn.Dropout(0.4)
    side = image_size // 16
    self.fc = nn.Linear(widths[-1] * side * side, emb)
    self.features = nn.BatchNorm1d(emb, eps=1e-5)
    self.qs = nn.Linear(emb, 1)

  def forward(self, x):
    x = self.prelu(self.bn1(self.conv1(x)))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    x = self.dropout(torch.flatten(self.bn2(x), 1))
    emb = self.features(self.fc(x))
    return emb, self.qs(emb)[:, 0]


def make(arch, **kw):
  if arch == "iresnet_tiny":
    kw = {"widths": (8, 16, 32, 64), "emb": 64, **kw}
  return TorchIResNet(STAGES[arch], **kw)


def randomize_(model, seed=0):
  """Random weights and non-trivial BN statistics (so a wrong mapping cannot hide)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "prelu" in name:
        p.copy_(0.1 + 0.3 * torch.rand(p.shape, generator=g))
      elif p.ndim == 1:  # BN scale/bias, linear biases
        p.copy_((1.0 if name.endswith("weight") else 0.0)
                + 0.2 * torch.randn(p.shape, generator=g))
      else:
        fan_in = p[0].numel()
        p.copy_(torch.randn(p.shape, generator=g) * (1.0 / fan_in) ** 0.5)
    for name, b in model.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(0.1 * torch.randn(b.shape, generator=g))
      elif name.endswith("running_var"):
        b.copy_(0.5 + torch.rand(b.shape, generator=g))
  return model
