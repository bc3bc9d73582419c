# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # crfiqa_jax quickstart: train CR-FIQA on synthetic faces, then look at what it learned
#
# This notebook runs the project's CPU demo (`python -m crfiqa_jax.main --config=demo`):
# synthetic identities whose every image carries a known degradation (blur, downscale, noise,
# occlusion, JPEG, exposure) at a known severity, a tiny iResNet trained with the full CR-FIQA
# loss, then an ERC evaluation on held-out identities. It then plots the training curves, the
# ERC and a gallery of held-out faces sorted by predicted quality.
#
# All the work is done by `crfiqa_jax`; the notebook only calls its command line and plots.
# The full demo takes about 8 minutes on a 2-core CPU. With the environment variable
# `CRFIQA_NOTEBOOK_SMOKE=1` (as in the project's CI) every size is tiny and the numbers
# mean nothing.

# %% [markdown]
# ## Install (Colab only)
# Set `REPO` to the repository you want to install from. The default is a placeholder
# (`OWNER/REPO`): replace it with the project's GitHub path (or your fork). Outside Colab
# this cell does nothing; install the package yourself (`pip install -e .` in a clone).

# %%
import sys

REPO = "https://github.com/OWNER/REPO"  # the project's GitHub path, or your fork
if "google.colab" in sys.modules:
  # %pip install --quiet "crfiqa_jax @ git+{REPO}"


# %% [markdown]
# ## Settings

# %%
import os

SMOKE = os.environ.get("CRFIQA_NOTEBOOK_SMOKE") == "1"
# The commands below run with this notebook's Python (its venv, if any).
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
WORKDIR = os.path.abspath("crfiqa_quickstart")
# Smoke mode: a few identities, a few steps (CI runs every notebook on a 2-core CPU).
TINY = ("--config.synthetic.identities=16 --config.synthetic.per_identity=8 "
        "--config.synthetic.eval_identities=8 --config.synthetic.eval_per_identity=6 "
        "--config.image_size=32 --config.batch_size=32 --config.total_steps=12 "
        "--config.log_every=3 --config.data_workers=0")
os.environ["WORKDIR"] = WORKDIR
os.environ["DEMO_FLAGS"] = TINY if SMOKE else ""
print("smoke mode" if SMOKE else "full demo", "→", WORKDIR)

# %% [markdown]
# ## Run the demo
# Generates the data into `WORKDIR/data` (cached), trains, and writes `WORKDIR/metrics.jsonl`
# and the held-out report `WORKDIR/eval/` (`metrics.json`, `erc.png`, `scores.csv`).
# The command is the README's; run it in a terminal just the same.

# %%
# %%bash
python3 -m crfiqa_jax.main --config=demo --workdir="$WORKDIR" $DEMO_FLAGS

# %% [markdown]
# ## Training curves
# One line per logged step in `metrics.jsonl`: the total loss, the mean certainty ratio CR
# the regression head learns to predict, and its two parts: CCS (cosine to the sample's own
# class centre) and NNCCS (cosine to the nearest other centre).

# %%
import json

import matplotlib.pyplot as plt

with open(os.path.join(WORKDIR, "metrics.jsonl")) as f:
  logged = [json.loads(line) for line in f]
steps = [m["step"] for m in logged]
fig, (ax_loss, ax_cos) = plt.subplots(1, 2, figsize=(11, 3.8))
ax_loss.plot(steps, [m["loss"] for m in logged])
ax_loss.set(title="training loss (ArcFace + λ·CR)", xlabel="step")
for key, label in (("ccs", "CCS"), ("nnccs", "NNCCS"), ("cr", "CR")):
  ax_cos.plot(steps, [m[key] for m in logged], label=label)
ax_cos.set(title="batch means", xlabel="step")
ax_cos.legend()
plt.show()

# %% [markdown]
# ## ERC on held-out identities
# Error-versus-reject curves: the false non-match rate after rejecting the pairs of lowest
# quality. A useful quality measure falls faster than random rejection; the oracle rejects by
# the true severity.

# %%
from IPython.display import Image, display

print(open(os.path.join(WORKDIR, "eval", "metrics.json")).read()[:600])
display(Image(os.path.join(WORKDIR, "eval", "erc.png")))

# %% [markdown]
# ## Held-out faces sorted by predicted quality
# `scores.csv` holds, per held-out image, its index in the test split, identity, predicted
# quality and its true degradation (kind and severity in [0, 1]). Top rows: highest predicted
# quality; bottom rows: lowest.

# %%
import csv

from crfiqa_jax.data import open_dataset

with open(os.path.join(WORKDIR, "eval", "scores.csv")) as f:
  rows = sorted(csv.DictReader(f), key=lambda r: -float(r["quality"]))
test = open_dataset(os.path.join(WORKDIR, "data"), "test")
cols = 8
shown = rows[:cols * 2] + rows[-cols * 2:]
fig, axes = plt.subplots(len(shown) // cols, cols, figsize=(2 * cols, 2.4 * len(shown) // cols))
for ax, r in zip(axes.flat, shown):
  ax.imshow(test[int(r["index"])]["image"])
  ax.set_title(f"q {float(r['quality']):.3f}\n{r['kind']} {float(r['severity']):.2f}",
               fontsize=8)
  ax.axis("off")
fig.suptitle("highest predicted quality (top two rows) … lowest (bottom two rows)")
plt.tight_layout()
plt.show()
