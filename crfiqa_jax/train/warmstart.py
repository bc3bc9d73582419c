"""Starting a run from a trained model: fine-tuning and the paper's "on top" ablation.

`load_init(state, config, trainer)` replaces the backbone, its BatchNorm statistics and the
class centres of a fresh TrainState by those of `config.init_checkpoint` (a released or
insightface .pth, an exported model directory, or one of our training workdirs). The
optimiser state stays fresh.

The class centres matter most "on top" (trainable="qs"): the backbone and the centres are
frozen and the quality head regresses the CR of the frozen embeddings against those
centres, so they must be the pretrained model's own, not random vectors. `init_centres`:
  "auto"    the checkpoint's own centres when it has them (our training workdirs), else the
            class means below;
  PATH[,…]  the trained model's classification head: the released `{step}header.pth`,
            insightface softmax / partial-FC weight files, or .npy
            (crfiqa_jax.serve.torch_import.load_centres);
  "means"   class means: one pass over the training split through the loaded backbone in
            inference mode (BN running statistics, no dropout, no flips); centre c = mean of
            the L2-normalised embeddings of class c's images (only its direction enters
            the loss). The pass covers the full global batches of one epoch, as training
            does, so up to batch_size-1 images are left out; a class none of whose images
            falls in the pass keeps its random centre (counted in the log);
  "random"  keep the fresh N(0, 0.01) centres (fine-tuning with a new head).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from crfiqa_jax import models, sharding
from crfiqa_jax.serve import model_io, torch_import
from crfiqa_jax.train import input_pipeline

log = logging.getLogger(__name__)


def load_init(state, config, trainer):
  """The fresh `state` with backbone, batch_stats and centres from config.init_checkpoint,
  placed with `trainer.state_shardings`. A checkpoint without a quality head (a plain
  ArcFace backbone) keeps the state's freshly initialised `qs`."""
  _, variables, info = model_io.load_model(config.init_checkpoint, config.model,
                                              qs_optional=True)
  if info["arch"] != config.model or info["embedding_dim"] != config.embedding_dim:
    raise ValueError(f"init_checkpoint {config.init_checkpoint} is {info['arch']} "
                     f"(embedding {info['embedding_dim']}), the config wants {config.model} "
                     f"(embedding {config.embedding_dim})")
  backbone = dict(variables["params"])
  if not info.get("has_qs", True):
    backbone["qs"] = state.params["backbone"]["qs"]
    log.info("%s has no quality head: qs starts fresh", config.init_checkpoint)
  want = jax.tree.map(lambda x: (x.shape, x.dtype), (state.params["backbone"],
                                                     state.batch_stats))
  got = jax.tree.map(lambda x: (tuple(np.shape(x)), jnp.asarray(x).dtype),
                     (backbone, variables["batch_stats"]))
  if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
    raise ValueError(f"init_checkpoint {config.init_checkpoint} does not fit the model of this "
                     "config (parameter shapes differ; check image_size and embedding_dim)")
  new = state.replace(params={**state.params, "backbone": backbone},
                      batch_stats=variables["batch_stats"])
  new = jax.device_put(new, trainer.state_shardings)
  source = info.get("source", config.init_checkpoint)
  centres, how = _centres(new, config, trainer, info)
  if centres is not None:
    new = new.replace(params={**new.params, "centres": centres})
  log.info("Initialised the backbone from %s; class centres: %s", source, how)
  return new


def _centres(state, config, trainer, info):
  """(centres [D, C_padded] placed like the state's, description), or (None, "random")."""
  choice = config.init_centres
  n, d = trainer.num_classes, config.embedding_dim
  if choice == "random":
    return None, "random"
  if choice == "auto" and "centres" in info:
    c, how = np.asarray(info["centres"]), f"the checkpoint's own ({config.init_checkpoint})"
    n_src = info.get("config", {}).get("num_classes", c.shape[1])
    if n_src != n or c.shape[1] < n:
      raise ValueError(f"{config.init_checkpoint} was trained on {n_src} classes, the data has "
                       f"{n}: on top needs the pretrained model's own training set (or pass "
                       "--config.init_centres=means)")
    c = c[:, :n]  # drop the source's padding columns
  elif choice in ("auto", "means"):
    return class_mean_centres(state, config, trainer), "class means over the training set"
  else:
    c, how = torch_import.load_centres(choice, d), f"from {choice}"
    if c.shape[1] != n:
      raise ValueError(f"{choice} holds {c.shape[1]} class centres, the data has {n} classes")
  if c.shape[0] != d:
    raise ValueError(f"centres of {config.init_checkpoint} are {c.shape[0]}-d, the config {d}-d")
  # Padding columns (a sharded class axis) keep the state's own.
  padded = np.array(jax.device_get(state.params["centres"]))
  padded[:, :n] = c
  return (jax.device_put(jnp.asarray(padded, jnp.float32),
                         trainer.state_shardings.params["centres"]), how)


def class_mean_centres(state, config, trainer) -> jax.Array:
  """Class-mean centres [D, C_padded] of the state's backbone (module docstring)."""
  model, mesh = trainer.model, trainer.mesh
  cols = trainer.num_classes_padded
  centre_sh = trainer.state_shardings.params["centres"]
  count_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      *centre_sh.spec[1:]) if len(centre_sh.spec) > 1 else jax.sharding.PartitionSpec())

  def accumulate(variables, images, labels, sums, counts):
    emb, _ = model.apply(variables, models.normalize(images), train=False)
    x = models.l2_normalize(emb, axis=1)
    one_hot = jax.nn.one_hot(labels, cols, dtype=jnp.float32)
    sums = sums + jnp.einsum("bd,bc->dc", x, one_hot, precision=jax.lax.Precision.HIGHEST)
    return sums, counts + one_hot.sum(axis=0)

  step = jax.jit(accumulate, out_shardings=(centre_sh, count_sh), donate_argnums=(3, 4))
  sums = jax.device_put(jnp.zeros((config.embedding_dim, cols), jnp.float32), centre_sh)
  counts = jax.device_put(jnp.zeros((cols,), jnp.float32), count_sh)
  variables = {"params": state.params["backbone"], "batch_stats": state.batch_stats}
  data = input_pipeline.train_dataset(
      config.data_dir, local_batch=trainer.local_batch, seed=config.seed,
      image_size=config.image_size, num_epochs=1, flip=0.0, worker_count=config.data_workers)
  it = iter(data)
  try:
    for _ in range(trainer.steps_per_epoch):  # the same count on every process
      batch = sharding.global_batch(next(it), mesh)
      sums, counts = step(variables, batch["image"], batch["label"], sums, counts)
  finally:
    close = getattr(it, "close", None)
    if close:
      close()
  real = np.asarray(jax.device_get(counts))[:trainer.num_classes]
  if (real == 0).any():
    log.warning("%d of %d classes had no image in the class-mean pass and keep their random "
                "centre", int((real == 0).sum()), trainer.num_classes)
  means = sums / jnp.maximum(counts, 1.0)
  return jax.device_put(jnp.where(counts > 0, means, state.params["centres"]), centre_sh)


def check_on_top(config):
  """On top (trainable="qs") only makes sense from a trained model."""
  if config.trainable == "qs" and not config.init_checkpoint:
    raise ValueError("trainable='qs' (the paper's on-top ablation) trains only the quality "
                     "head of a frozen FR model: pass --config.init_checkpoint=PATH")
