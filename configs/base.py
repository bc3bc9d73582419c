"""Every configuration field, with its default. Named configs start from this one.

Override any field on the command line: --config.batch_size=256. An unknown key fails
with the list of valid keys.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # --- Data. ---
  c.data_dir = ""            # dataset written by `python -m crfiqa_jax.prepare` (train split)
  c.eval_data_dir = ""       # held-out set reported after training ("": data_dir's, if it
                             # holds one; "none": no report)
  c.compare_quality = ""     # real-face report: other models' qualities, "NAME=PATH,..."
  c.image_size = 112         # aligned face crops, pixels per side
  c.flip = 0.5               # horizontal-flip probability (the paper's only augmentation)
  c.augment_batch = False    # degrade the training batch itself with ig_augment's draws
                             # (configs/celeba.py: real photos; the paper flips only)
  c.data_workers = 2         # grain worker processes per host (0 = in-process)
  c.synthetic = ml_collections.ConfigDict()  # demo only: generator settings (configs/demo.py)
  c.paper_num_classes = 0    # expected identities/images (warn when the data differ; 0 = off)
  c.paper_num_examples = 0

  # --- Model. ---
  c.model = "iresnet50"      # iresnet18/34/50/100 or iresnet_tiny (tests, demo)
  c.embedding_dim = 512
  c.dropout = 0.4            # before the FC layer, training only
  c.dtype = "float32"        # computation dtype; "bfloat16" for accelerators
  c.conv_grad = "auto"       # conv weight gradients: "auto" (a matmul per kernel tap on CPU,
                             # XLA's own elsewhere), "matmul" or "xla" (crfiqa_jax.models.conv)

  # --- Method. ---
  c.method = "crfiqa"        # "crfiqa", or "igfiqa": IG-FIQA's class-variance weights and
                             # augmented copy for the quality branch (docs/design.md, IG-FIQA)
  c.ig_backbone_grad = True  # igfiqa: the augmented quality loss also trains the backbone
  # igfiqa: the augmented copy's degradations (crfiqa_jax.train.augment.AugmentParams; the paper
  # gives no values, these are ours): per image, each with its own probability.
  c.ig_augment = ml_collections.ConfigDict(dict(
      p_rescale=0.5, min_scale=0.2, p_erase=0.5, erase_area=(0.02, 0.33),
      erase_aspect=(0.3, 3.3), p_jitter=0.5, jitter=0.4, p_gray=0.2))

  # --- Loss (paper eqs. 1-6). ---
  c.scale = 64.0             # ArcFace s
  c.margin = 0.5             # ArcFace m
  c.margin_fallback = False  # insightface's θ+m>π guard; the released CR-FIQA code has none
  c.lambda_cr = 10.0         # λ in L = L_Arc + λ·L_CR
  c.cr_form = "paper"        # "paper": CCS/(NNCCS+1+ε); "code": released CCS/NNCCS
  c.target = "cr"            # "cr" (CR-FIQA) or "ccs" (CCS-FIQA ablation)
  c.beta = 0.5               # smooth-L1 β
  c.eps = 1e-9               # ε of eq. 4

  # --- Optimisation (paper §4, released code). ---
  c.batch_size = 512         # global batch over all devices and processes
  c.lr = 0.1                 # base lr at batch 512; scaled by batch_size/512
  c.momentum = 0.9
  c.weight_decay = 5e-4      # on every parameter, added to the gradient before momentum
  c.clip_norm = 5.0          # global-norm clip of the backbone gradient (0 = off)
  c.nan_policy = "stop"      # non-finite loss: "stop" (exit 3, last good checkpoint newest) or
                             # "skip_step" (drop that update, count it; docs/faults.md)
  c.num_epochs = 34
  c.lr_decay_epochs = (19, 27, 31)  # ×0.1 after this many epochs (released: MILESTONES
                                    # [20, 28, 32] decay after m-1 epochs; configs/small.py)
  c.total_steps = 0          # 0 = num_epochs × steps per epoch
  c.trainable = "all"        # "all", or "qs": only the quality head ("on top" ablation)
  c.init_checkpoint = ""     # backbone to start from: .pth, exported dir or workdir
  c.init_centres = "auto"    # with init_checkpoint: "auto" (the checkpoint's own, else class
                             # means), "means", "random" or head file(s) (crfiqa_jax.train.warmstart)

  # --- Sharding. ---
  c.shard_centres = False    # split the class-centre matrix along classes over devices

  # --- Bookkeeping. ---
  c.seed = 0
  c.log_every = 100
  c.checkpoint_every = 2000
  c.keep_checkpoints = 3
  c.eval_batch_size = 256
  return c
