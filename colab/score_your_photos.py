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
# # Score your photos with CR-FIQA
#
# Raw photos → face detection (MTCNN) and alignment to the ArcFace 112×112 template →
# one quality score per photo in a CSV → a gallery sorted by quality.
#
# Quality comes from a CR-FIQA model: the released PyTorch weights converted with
# `python -m crfiqa_jax.convert`, your own training run, or, when you give none, a
# **stand-in model with random weights whose scores mean nothing** (it only shows the steps).
# With `CRFIQA_NOTEBOOK_SMOKE=1` (the project's CI) the notebook scores the small photos that
# ship with the repository's tests.

# %% [markdown]
# ## Install (Colab only)
# Replace the placeholder `OWNER/REPO` with the project's GitHub path (or your fork).
# The `[detect]` extra brings MTCNN and OpenCV. Outside Colab: `pip install -e ".[detect]"`.

# %%
import sys

REPO = "https://github.com/OWNER/REPO"  # the project's GitHub path, or your fork
if "google.colab" in sys.modules:
  # %pip install --quiet "crfiqa_jax[detect] @ git+{REPO}"

# %% [markdown]
# ## Settings
# * `PHOTOS`: a folder of photos (any size, one or more people per photo).
# * `WEIGHTS`: the released CR-FIQA backbone you downloaded from the CR-FIQA authors'
#   repository (github.com/fdbtrs/CR-FIQA): `181952backbone.pth` (CR-FIQA(L), iResNet100) or
#   `32572backbone.pth` (CR-FIQA(S), iResNet50). Leave it empty for the stand-in model.

# %%
import os
from pathlib import Path

SMOKE = os.environ.get("CRFIQA_NOTEBOOK_SMOKE") == "1"
# The commands below run with this notebook's Python (its venv, if any).
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
PHOTOS = Path("my_photos").absolute()
WEIGHTS = ""            # e.g. "/content/181952backbone.pth"
OUT = Path("scored").absolute()
PHOTOS.mkdir(exist_ok=True)
OUT.mkdir(exist_ok=True)

# %% [markdown]
# ## Your photos
# In Colab, pick files to upload. Elsewhere, put them into `PHOTOS`. In smoke mode, or when
# the folder is empty, the repository's test photos (`tests/fixtures/photos`: public-domain
# portraits and a cat, which has no face and is reported as such) are used when present.

# %%
import shutil

import crfiqa_jax

if "google.colab" in sys.modules and not SMOKE:
  from google.colab import files
  for name, content in files.upload().items():
    (PHOTOS / name).write_bytes(content)
repo_photos = Path(crfiqa_jax.__file__).parents[1] / "tests" / "fixtures" / "photos"
if (SMOKE or not any(PHOTOS.iterdir())) and repo_photos.is_dir():
  for f in repo_photos.glob("*.jpg"):
    shutil.copy(f, PHOTOS / f.name)
print(sorted(p.name for p in PHOTOS.iterdir()))

# %% [markdown]
# ## The model
# With `WEIGHTS` set, convert the released PyTorch weights once into a Flax checkpoint folder
# (torch is not needed; the architecture is detected from the block counts). `score` also
# reads a `.pth` directly, but the converted folder loads faster.
#
# Without weights, a stand-in: a tiny iResNet with random weights, saved the same way.
# **Its scores are meaningless.** It is made on the CPU so that an accelerator stays free for
# the scoring command below.

# %%
MODEL = OUT / "model"
os.environ.update(MODEL=str(MODEL), WEIGHTS=WEIGHTS, PHOTOS=str(PHOTOS), OUT=str(OUT))
if WEIGHTS:
  if not (MODEL / "model.json").exists():
    # !python3 -m crfiqa_jax.convert --torch="$WEIGHTS" --out="$MODEL"
  assert (MODEL / "model.json").exists(), f"converting {WEIGHTS} failed (see above)"
else:
  import jax
  jax.config.update("jax_platforms", "cpu")
  from crfiqa_jax import models
  from crfiqa_jax.serve import model_io
  if not (MODEL / "model.json").exists():
    stand_in = models.create_model("iresnet_tiny", embedding_dim=64)
    # An "rbg" key: the random initialiser then compiles in seconds rather than a minute.
    variables = stand_in.init(jax.random.key(0, impl="rbg"), jax.numpy.zeros((1, 112, 112, 3)))
    model_io.save_exported(MODEL, variables, arch="iresnet_tiny", embedding_dim=64,
                           source="STAND-IN: random weights, meaningless scores")
  print("STAND-IN MODEL (random weights): the scores below mean nothing.")
print(open(MODEL / "model.json").read())

# %% [markdown]
# ## Detect, align, score
# One row per photo (`--face=center` picks the face nearest the centre; `--all-faces` gives
# one row per face). Photos without a face get an empty quality and a line on stderr, and
# the command then exits with 1; 2 means an error.

# %%
# %%bash
set -e  # exit code 1 (some photos without a face) is fine; 2 (an error) stops here
python3 -m crfiqa_jax.score --checkpoint="$MODEL" --input="$PHOTOS" --output="$OUT/q.csv" \
    --detect --save-aligned="$OUT/aligned" || [ $? -eq 1 ]
head -n 20 "$OUT/q.csv"

# %% [markdown]
# ## Gallery sorted by quality
# The aligned crops the model saw (from `--save-aligned`), best first.

# %%
import csv

import matplotlib.pyplot as plt
from PIL import Image

with open(OUT / "q.csv") as f:
  rows = [r for r in csv.DictReader(f) if r["quality"]]
rows.sort(key=lambda r: -float(r["quality"]))
fig, axes = plt.subplots(1, max(len(rows), 1), figsize=(2.2 * max(len(rows), 1), 2.8),
                         squeeze=False)
for ax, r in zip(axes.flat, rows):
  # --save-aligned writes OUT/aligned/<path relative to PHOTOS>.png
  ax.imshow(Image.open(OUT / "aligned" / (os.path.relpath(r["path"], PHOTOS) + ".png")))
  ax.set_title(f"{Path(r['path']).name}\nq {float(r['quality']):.3f}", fontsize=8)
  ax.axis("off")
fig.suptitle("stand-in model: meaningless order" if not WEIGHTS else "CR-FIQA quality, best first")
plt.tight_layout()
plt.show()
