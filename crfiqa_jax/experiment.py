"""The main job, above training and evaluation: data, checks, train, held-out report.

    python -m crfiqa_jax.main --config=demo --workdir=/tmp/crfiqa_demo

Order matters for users of big runs: everything the run will need is checked before the
first step (data layout and metadata, eval data, the init checkpoint, a resumed workdir's
config), so a mistake costs seconds, not a training run. With several processes the
synthetic data is written once, by process 0, while the others wait at a barrier.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import ml_collections

from crfiqa_jax import evaluate, realfaces, train

log = logging.getLogger(__name__)


def barrier(name: str):
  """Waits for every process (no-op with one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def prepare_data(config: ml_collections.ConfigDict, workdir: str | Path):
  """The demo's synthetic data (written once, by process 0) into config.data_dir."""
  if not config.synthetic:
    return
  from crfiqa_jax.data import synthetic
  if not config.data_dir:
    with config.unlocked():
      config.data_dir = str(Path(workdir).absolute() / "data")
      config.eval_data_dir = config.eval_data_dir or config.data_dir
  error = None
  if jax.process_index() == 0:
    try:
      synthetic.ensure_dataset(config)
    except ValueError as e:  # raised after the barrier, on every process alike
      error = e
  barrier("crfiqa_jax synthetic data ready")
  if error is not None:
    raise error
  if jax.process_index() != 0:
    synthetic.ensure_dataset(config)  # now only checks the parameters of what is there


def preflight(config: ml_collections.ConfigDict, workdir: str | Path):
  """Everything that would otherwise fail after training, checked before the first step."""
  train.dataset_facts(config)
  if config.eval_data_dir:
    if report_kind(config.eval_data_dir) == "pairs":
      realfaces.read_pairs(config.eval_data_dir, "test")
    else:
      evaluate.check_eval_data(config.eval_data_dir, "test")
  if config.init_checkpoint:
    if not Path(config.init_checkpoint).exists():
      raise FileNotFoundError(f"init_checkpoint {config.init_checkpoint} does not exist: "
                              "fix --config.init_checkpoint")
    from crfiqa_jax import convert
    _, _, info = convert.load_model(config.init_checkpoint, config.model)
    if (info["arch"], info["embedding_dim"]) != (config.model, config.embedding_dim):
      raise ValueError(f"init_checkpoint {config.init_checkpoint} is {info['arch']} with "
                       f"embedding {info['embedding_dim']}; the config wants {config.model} "
                       f"with {config.embedding_dim}: fix --config.model / "
                       "--config.embedding_dim or --config.init_checkpoint")
  train.check_resume_config(config, workdir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Synthetic data if the config asks for it, checks, training, then the ERC report of
  `config.eval_data_dir` (if set) into workdir/eval; returns the final TrainState."""
  started = time.perf_counter()
  prepare_data(config, workdir)
  preflight(config, workdir)
  state = train.train(config, workdir)
  if config.eval_data_dir:
    out = Path(workdir) / "eval"
    if report_kind(config.eval_data_dir) == "pairs":
      realfaces.evaluate_state(state, config, out, started=started)
    else:
      m = evaluate.evaluate_checkpoint_state(state, config, out, started=started)
      if m is not None:
        print_summary(m, out)
  return state


def report_kind(eval_data_dir) -> str:
  """"pairs" for a verification split with stored pairs (`prepare celeba`, `prepare bin`:
  the real-face report, crfiqa_jax.realfaces), "synthetic" for the demo's held-out faces
  with known degradation severities."""
  from crfiqa_jax.data.records import read_info
  if not Path(eval_data_dir).exists():
    raise FileNotFoundError(f"--config.eval_data_dir={eval_data_dir} does not exist")
  info = read_info(eval_data_dir)
  if "test" not in info["splits"]:
    raise ValueError(f"--config.eval_data_dir={eval_data_dir} has no 'test' split (it has "
                     f"{sorted(info['splits'])}): give it a `prepare celeba`, `prepare bin` or "
                     "`prepare synthetic` output, or --config.eval_data_dir= to skip the report")
  return "pairs" if isinstance(info.get("test_pairs"), list) else "synthetic"


def print_summary(m: dict, out_dir: Path):
  auc = m["erc_auc"]
  lines = [
      "",
      f"Held-out evaluation ({m['num_identities']} unseen identities, {m['num_images']} images, "
      f"{m['num_pairs']:,} pairs) after {m['train_steps']} steps, {m['wall_seconds']:.0f} s:",
      f"  Spearman(predicted quality, true degradation severity) = "
      f"{m['spearman_quality_vs_severity']:+.3f}  (-1 = perfect, 0 = no relation)",
  ]
  for mode in auc:
    for f, r in auc[mode].items():
      gain = 1 - r["learned"] / r["random"] if r["random"] else float("nan")
      lines.append(f"  ERC AUC [{mode:10s} FMR={f}] learned {r['learned']:.4f}  random "
                   f"{r['random']:.4f}  oracle {r['oracle']:.4f}  → {100 * gain:.0f}% below "
                   "random")
  for f, by_m in m.get("standard", {}).get("fmr", {}).items():
    r = {k: by_m[k] for k in ("learned", "random", "oracle") if k in by_m}
    lines.append(f"  EDC pAUC@{m['standard']['limit']} [standard   FMR={f}] " + "  ".join(
        f"{k} {v['pauc']:.4f} (−best {v['pauc_minus_best']:.4f})" for k, v in r.items()))
  lines.append(f"  Lower AUC = rejecting the lowest-quality pairs removes more errors. "
               f"Plot: {out_dir / 'erc.png'}; numbers: {out_dir / 'metrics.json'}")
  print("\n".join(lines), flush=True)
