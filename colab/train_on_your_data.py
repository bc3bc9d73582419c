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
# # Train CR-FIQA on your data, then evaluate it
#
# 1. `python -m crfiqa_jax.prepare`: your faces (a folder with one subfolder of aligned
#    112×112 images per identity, or an insightface `train.rec` package) → a record dataset.
# 2. `python -m crfiqa_jax.main --config=small`: CR-FIQA(S) training (iResNet50, the paper's
#    recipe) with a progress line every `log_every` steps, checkpoints and automatic resume.
# 3. `python -m crfiqa_jax.evaluate`: ERC plots and the AUC table on a verification benchmark.
#
# On a TPU or GPU runtime the same cells use every device: training is data-parallel over
# a mesh of all of them. The notebook's own Python process never touches the accelerator
# (each step runs as a command), so the commands can take it.
#
# With `CRFIQA_NOTEBOOK_SMOKE=1` (the project's CI) everything is tiny: a few synthetic
# identities written as an image-folder tree, a tiny iResNet, a few steps, a synthetic
# benchmark. The numbers then mean nothing.

# %% [markdown]
# ## Install (Colab only)
# Replace the placeholder `OWNER/REPO` with the project's GitHub path (or your fork).

# %%
import sys

REPO = "https://github.com/OWNER/REPO"  # the project's GitHub path, or your fork
if "google.colab" in sys.modules:
  # %pip install --quiet "crfiqa_jax @ git+{REPO}"

# %% [markdown]
# ## Settings
# * `IMAGES`: a folder `IMAGES/<identity>/<image>` of aligned faces, or
# * `REC`: a folder with insightface's `train.rec`, `train.idx` and `property`
#   (e.g. CASIA-WebFace `faces_webface_112x112`); it wins when set.
# * `BENCH_BIN`: a verification `.bin` (e.g. `lfw.bin` from the same insightface package);
#   without one, a synthetic held-out set with known degradations is the benchmark.
# * `CELEBA`: a CelebA-layout folder of real photos (`identity_CelebA.txt` and the images
#   it names; a sample will do). When set, section 6 trains `--config=celeba` on it and
#   reports on held-out people (in smoke mode a tiny one is made from synthetic faces).

# %%
import os
from pathlib import Path

SMOKE = os.environ.get("CRFIQA_NOTEBOOK_SMOKE") == "1"
# The commands below run with this notebook's Python (its venv, if any).
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
IMAGES = Path("my_faces").absolute()
REC = ""                 # e.g. "/content/faces_webface_112x112"
CELEBA = ""              # e.g. "/content/celeba" (identity_CelebA.txt + img_celeba/)
BENCH_BIN = ""           # e.g. "/content/faces_webface_112x112/lfw.bin"
WORK = Path("crfiqa_run").absolute()
SIZE = 32 if SMOKE else 112
TRAIN_FLAGS = ("--config.model=iresnet_tiny --config.embedding_dim=64 "
               f"--config.image_size={SIZE} --config.batch_size=16 --config.total_steps=12 "
               "--config.log_every=3 --config.data_workers=0") if SMOKE else ""
# The synthetic benchmark: 8 × 6 held-out faces in smoke mode, else 60 × 10.
BENCH_FLAGS = "--eval-identities=8 --eval-per-identity=6" if SMOKE else ""
os.environ.update(IMAGES=str(IMAGES), REC=REC, BENCH_BIN=BENCH_BIN, SIZE=str(SIZE),
                  DATA=str(WORK / "data"), RUN=str(WORK / "run"), BENCH=str(WORK / "bench"),
                  REPORT=str(WORK / "report"), TRAIN_FLAGS=TRAIN_FLAGS,
                  BENCH_FLAGS=BENCH_FLAGS, CELEBA_DATA=str(WORK / "celeba_data"),
                  CELEBA_RUN=str(WORK / "celeba_run"))

# %% [markdown]
# Smoke mode only: a tiny identity-folder tree made of synthetic faces (16 identities × 6
# images), standing in for your `IMAGES`.

# %%
if SMOKE and not IMAGES.exists():
  from crfiqa_jax.data import synthetic
  for r in synthetic.samples(16, 6, seed=0, size=SIZE):
    person = IMAGES / f"person_{r['label']:03d}"
    person.mkdir(parents=True, exist_ok=True)
    (person / f"{len(list(person.iterdir()))}.jpg").write_bytes(r["image"])
print(sum(1 for _ in IMAGES.rglob("*.jpg")) if IMAGES.exists() else 0, "images in", IMAGES)

# %% [markdown]
# ## 1. Prepare
# What was read, written and skipped (and why) is printed at the end. Faces must already be
# aligned (`prepare folder --detect` aligns raw photos, with the `[detect]` extra).

# %%
# %%bash
set -e
if [ -n "$REC" ]; then
  python3 -m crfiqa_jax.prepare insightface "$REC" "$DATA"
else
  python3 -m crfiqa_jax.prepare folder "$IMAGES" "$DATA" --image-size="$SIZE"
fi

# %% [markdown]
# ## 2. The devices and the mesh training will use

# %%
# %%bash
python3 -c "
import jax
from crfiqa_jax import sharding
print(jax.devices())
print(sharding.make_mesh())
"

# %% [markdown]
# ## 3. Train
# `--config=small` is CR-FIQA(S): iResNet50, global batch 512, 34 epochs. Override any field
# with `--config.key=value` (an unknown key lists the valid ones). Interrupted? Run the cell
# again: training resumes from the last checkpoint in `RUN`.

# %%
# %%bash
python3 -m crfiqa_jax.main --config=small --workdir="$RUN" --config.data_dir="$DATA" $TRAIN_FLAGS

# %% [markdown]
# ## 4. A benchmark
# `prepare bin` reads insightface's verification `.bin` files (LFW, AgeDB-30, CFP-FP, ...).
# Without one: synthetic held-out identities whose true degradation severity gives an
# oracle ordering to compare with.

# %%
# %%bash
set -e
if [ -n "$BENCH_BIN" ]; then
  python3 -m crfiqa_jax.prepare bin "$BENCH_BIN" "$BENCH"
elif [ ! -e "$BENCH" ]; then
  python3 -m crfiqa_jax.prepare synthetic "$BENCH" --identities=2 --per-identity=2 \
      --image-size="$SIZE" --seed=1 $BENCH_FLAGS
fi

# %% [markdown]
# ## 5. Evaluate: ERC plots and the AUC table
# Quality methods: the trained model, random rejection and (synthetic benchmark) the oracle.
# The face recognition model comparing the pairs is the trained network itself; pass
# `--fr=NAME=PATH` again for others (a checkpoint, or embeddings in an `.npz`).

# %%
# %%bash
python3 -m crfiqa_jax.evaluate --benchmark=bench="$BENCH" --quality=crfiqa="$RUN" \
    --quality=random=random --quality=oracle=oracle --fr=self="$RUN" \
    --out="$REPORT" --fmr=1e-2,1e-3

# %%
import csv

from IPython.display import Image, display

report = WORK / "report"
with open(report / "auc_table.csv") as f:
  table = list(csv.reader(f))
width = max(len(c) for row in table for c in row)
for row in table:
  print("  ".join(c.ljust(width if i else 8) for i, c in enumerate(row)))
for png in sorted(report.rglob("*recomputed.png")):
  print(png.relative_to(report))
  display(Image(png))

# %% [markdown]
# ## 6. Real photos: CelebA identities, judged on people the model never saw
# `prepare celeba` aligns every face (CelebA's landmark file when present, else the MTCNN
# detector of the `[detect]` extra), holds out whole identities as verification pairs and
# counts what it skipped. `--config=celeba` trains on the rest and writes the real-face
# report: ERC tables of the learned quality against random, face size, detector confidence
# and sharpness, under the model's own embeddings and, with the `[dlib]` extra, dlib's.
# About 45 minutes on a shared 2-core CPU for a 6,300-photo sample: prepare 5, train 39,
# report 1 (docs/real-faces.md).
# Smoke mode: a tiny CelebA-layout folder of synthetic faces with a landmark file.

# %%
if SMOKE and not CELEBA:
  from crfiqa_jax.data import faces
  from crfiqa_jax.data import synthetic
  CELEBA = WORK / "celeba_smoke"
  (CELEBA / "img_celeba").mkdir(parents=True, exist_ok=True)
  ids, marks = [], []
  for i, r in enumerate(synthetic.samples(10, 4, seed=0, size=48)):
    name = f"{i + 1:06d}.jpg"
    (CELEBA / "img_celeba" / name).write_bytes(r["image"])
    ids.append(f"{name} {r['label'] + 1}")
    pts = (faces.ARCFACE_TEMPLATE * 48 / 112).round().astype(int).reshape(-1)
    marks.append(name + " " + " ".join(map(str, pts)))
  (CELEBA / "identity_CelebA.txt").write_text("\n".join(ids) + "\n")
  (CELEBA / "list_landmarks_celeba.txt").write_text(
      f"{len(marks)}\nlefteye_x lefteye_y ...\n" + "\n".join(marks) + "\n")
os.environ["CELEBA"] = str(CELEBA)
CELEBA_FLAGS = ("--holdout-identities=3 --min-images=2" if SMOKE else "")
CELEBA_TRAIN = ("--config.image_size=32 --config.total_steps=6 --config.batch_size=8 "
                "--config.data_workers=0 --config.log_every=3") if SMOKE else ""
os.environ.update(CELEBA_FLAGS=CELEBA_FLAGS, CELEBA_TRAIN=CELEBA_TRAIN)

# %%
# %%bash
set -e
if [ -z "$CELEBA" ]; then echo "CELEBA is not set: skipped"; exit 0; fi
[ -e "$CELEBA_DATA" ] || python3 -m crfiqa_jax.prepare celeba "$CELEBA" "$CELEBA_DATA" $CELEBA_FLAGS
python3 -m crfiqa_jax.main --config=celeba --workdir="$CELEBA_RUN" \
    --config.data_dir="$CELEBA_DATA" --config.eval_data_dir="$CELEBA_DATA" $CELEBA_TRAIN

# %%
for png in sorted((WORK / "celeba_run" / "eval").glob("erc_*.png")):
  print(png.name)
  display(Image(png))
