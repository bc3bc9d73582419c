"""The evaluation runner on a hand-built benchmark.

16 images, identity = index // 2, all 120 pairs listed (8 genuine, 112 impostor).
Embeddings are one-hot per identity, except image 1 = 0.6·e0 + 0.8·e7: its genuine pair
scores 0.6 and its pairs with images 14, 15 (identity 7) score 0.8; every other genuine
pair scores 1, every other impostor 0. Image 1 has the lowest quality.
"""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from crfiqa_jax.evaluation import evaluate


@pytest.fixture
def bench(tmp_path):
  root = tmp_path / "toy"
  (root / "images").mkdir(parents=True)
  lines = []
  for i in range(16):
    Image.fromarray(np.full((112, 112, 3), 10 * i, np.uint8)).save(root / "images" / f"{i}.png")
  for i in range(16):
    for j in range(i + 1, 16):
      lines.append(f"{i} {j} {int(i // 2 == j // 2)}")
  (root / "pairs.txt").write_text("\n".join(lines) + "\n")
  emb = {}
  for i in range(16):
    v = np.zeros(8)
    v[i // 2] = 1
    if i == 1:
      v = np.zeros(8)
      v[0], v[7] = 0.6, 0.8
    emb[f"{i}"] = v
  np.savez(tmp_path / "fr.npz", **emb)
  q = {i: 1.0 + i / 100 for i in range(16)}
  q[1] = 0.1
  (tmp_path / "q.csv").write_text("path,quality\n" + "".join(
      f"{root / 'images' / f'{i}.png'},{q[i]}\n" for i in range(16)))
  return root, tmp_path


def test_runner_hand_computed(bench):
  root, tmp = bench
  res = evaluate.run_report([f"toy={root}"], [f"cr={tmp / 'q.csv'}", "random=random"],
                            [f"arc={tmp / 'fr.npz'}"], tmp / "out", fmrs=["1e-2"])
  r = res["toy"]["arc"]
  assert r["pairs_used"] == 120 and r["genuine_used"] == 8 and r["impostor_used"] == 112
  fixed = r["erc"]["fixed"]["1e-2"]["cr"]["fnmr"]
  rec = r["erc"]["recomputed"]["1e-2"]["cr"]["fnmr"]
  # r=0: threshold 0.8 (fixed: 2nd highest impostor; recomputed: FMR 2/112 nearest 1e-2):
  # the 0.6 genuine pair is rejected → FNMR 1/8.
  assert fixed[0] == pytest.approx(1 / 8) and rec[0] == pytest.approx(1 / 8)
  # r=0.05: the 15 pairs tied at image 1's quality are discarded together (fixed mode).
  assert fixed[1] == 0.0
  # r=0.15 drops 18 pairs in the released ordering, all of image 1's among them: genuine at
  # distance 0, impostors at 0.5; the threshold lands on distance 0 and strict "<" rejects
  # every genuine pair — the released script's behaviour, reproduced.
  assert rec[3] == 1.0
  for mode in ("fixed", "recomputed"):
    png = tmp / "out" / "toy" / f"arc_FMR1e-2_{mode}.png"
    assert png.stat().st_size > 5000
  table = (tmp / "out" / "auc_table.csv").read_text().splitlines()
  assert table[0] == "method,toy/arc/recomputed/FMR=1e-2,toy/arc/fixed/FMR=1e-2"
  assert sorted(row.split(",")[0] for row in table[1:]) == ["cr", "random"]
  saved = json.loads((tmp / "out" / "results.json").read_text())
  assert saved["benchmarks"]["toy"]["arc"]["pairs_used"] == 120
  # 112 impostors: floor(1e-3·112) = 0, so the standard table skips both of its FMRs.
  assert set(r["standard"]["skipped"]) == {"1e-3", "1e-4"} and r["standard"]["fmr"] == {}


@pytest.mark.parametrize("how", ["min", "product"])
def test_standard_table_hand_computed(bench, how):
  root, tmp = bench
  res = evaluate.run_report([f"toy={root}"], [f"cr={tmp / 'q.csv'}", "random=random"],
                            [f"arc={tmp / 'fr.npz'}"], tmp / "out", fmrs=["1e-2"],
                            standard_fmrs=["1e-2"], pair_quality=how)
  std = res["toy"]["arc"]["standard"]
  # k = floor(1e-2·112) = 1; the two highest impostors tie at 0.8, so the threshold is the
  # float just above 0.8 and only the 0.6 genuine pair (0, 1) is rejected: e0 = 1/8. Its
  # pair quality (0.1 with min, 0.1·1.0 with product) is the lowest of 8 distinct mated
  # levels: x = 0, 1/8, …, y = 1/8, 0, …; pAUC@0.2 = 1/8·1/8, best = (1/8)²/2.
  cr = std["fmr"]["1e-2"]["cr"]
  assert cr["threshold"] == np.nextafter(0.8, 1)
  assert cr["starting_fnmr"] == 1 / 8
  assert cr["pauc"] == pytest.approx(1 / 64) and cr["pauc_minus_best"] == pytest.approx(1 / 128)
  assert std["fmr"]["1e-2"]["random"]["starting_fnmr"] == 1 / 8
  assert (tmp / "out" / "toy" / "arc_FMR1e-2_edc.png").stat().st_size > 5000
  rows = (tmp / "out" / "pauc_table.csv").read_text().splitlines()
  assert rows[0] == "method,toy/arc/FMR=1e-2/pauc@0.2,toy/arc/FMR=1e-2/pauc@0.2-best"
  assert rows[1] == "cr,0.015625,0.007812"


def test_pairs_without_quality_are_left_out_and_counted(bench):
  root, tmp = bench
  lines = (tmp / "q.csv").read_text().splitlines()
  (tmp / "q.csv").write_text("\n".join(lines[:-1]) + "\n")  # image 15 has no quality
  res = evaluate.run_report([f"toy={root}"], [f"cr={tmp / 'q.csv'}"],
                            [f"arc={tmp / 'fr.npz'}"], tmp / "out", fmrs=["1e-2"])
  assert res["toy"]["arc"]["pairs_used"] == 120 - 15


def test_cli_errors_are_clear(bench, capsys):
  root, tmp = bench
  (tmp / "bad.csv").write_text("path,quality\n0.png,inf\n")
  rc = evaluate.main([f"--benchmark={root}", f"--quality=x={tmp / 'bad.csv'}",
                      f"--fr=arc={tmp / 'fr.npz'}", f"--out={tmp / 'o'}"])
  assert rc == 2 and "not finite" in capsys.readouterr().err
  assert evaluate.main([f"--benchmark={root}", "--quality=random", f"--fr={tmp / 'fr.npz'}",
                        f"--out={tmp / 'o'}", "--fmr=1e-5"]) == 2
  with pytest.raises(SystemExit):
    evaluate.main([f"--benchmark={root}", "--quality=random", f"--fr={tmp / 'fr.npz'}",
                   f"--out={tmp / 'o'}", "--pair-quality=mean"])
  assert "invalid choice: 'mean'" in capsys.readouterr().err


def test_onnx_quality_source_equals_the_flax_model_it_came_from(bench):
  """An .onnx quality PATH runs in onnxruntime (not read as a scores CSV): its ERC equals the
  one of the exported directory holding the same weights."""
  import jax

  from crfiqa_jax import models
  from crfiqa_jax.serve import model_io
  from crfiqa_jax.serve import onnx_graph
  root, tmp = bench
  model = models.create_model("iresnet_tiny")
  variables = model.init(jax.random.key(4), np.zeros((1, 112, 112, 3), np.float32))
  info = {"arch": "iresnet_tiny", "embedding_dim": 64, "image_size": 112}
  (tmp / "m.onnx").write_bytes(onnx_graph.onnx_model(model, variables, info).SerializeToString())
  model_io.save_exported(tmp / "flax", variables, arch="iresnet_tiny", embedding_dim=64)
  res = evaluate.run_report([f"toy={root}"], [f"onnx={tmp / 'm.onnx'}", f"flax={tmp / 'flax'}"],
                            [f"arc={tmp / 'fr.npz'}"], tmp / "out", fmrs=["1e-2"], batch_size=8)
  erc = res["toy"]["arc"]["erc"]["fixed"]["1e-2"]
  assert res["toy"]["arc"]["pairs_used"] == 120
  np.testing.assert_allclose(erc["onnx"]["fnmr"], erc["flax"]["fnmr"])
  assert erc["onnx"]["auc"] == pytest.approx(erc["flax"]["auc"])


def test_report_page_of_a_run(bench):
  """`--report=PAGE.html`: one page with the run's AUC table and every plot it wrote."""
  root, tmp = bench
  assert evaluate.main([f"--benchmark=toy={root}", f"--quality=cr={tmp / 'q.csv'}",
                        f"--fr=arc={tmp / 'fr.npz'}", f"--out={tmp / 'o'}", "--fmr=1e-2",
                        f"--report={tmp / 'page.html'}"]) == 0
  page = (tmp / "page.html").read_text()
  auc = json.loads((tmp / "o" / "results.json").read_text())[
      "benchmarks"]["toy"]["arc"]["erc"]["recomputed"]["1e-2"]["cr"]["auc"]
  assert "toy/arc/recomputed/FMR=1e-2" in page and f"{auc:.6g}"[:6] in page
  plots = sorted((tmp / "o" / "toy").glob("*.png"))
  assert plots and page.count("data:image/png;base64,") == len(plots)


def test_sigterm_abandons_the_report_and_a_rerun_writes_it(tiny_model, tmp_path):
  """A real SIGTERM while the model runs over the benchmark's images: exit code 75 and one
  `stopped:` line, no tables or results.json that would pass for a complete report; the
  same command then writes them."""
  model_dir, _, _ = tiny_model
  root = tmp_path / "bench"
  (root / "images").mkdir(parents=True)
  rng = np.random.default_rng(0)
  for i in range(600):
    Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(
        root / "images" / f"{i}.png", compress_level=0)
  (root / "pairs.txt").write_text("".join(f"{i} {i + 1} {int(i % 4 == 0)}\n"
                                          for i in range(0, 599)))
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "crfiqa_jax.evaluate", f"--benchmark=b={root}",
         f"--quality=m={model_dir}", f"--fr=m={model_dir}", f"--out={out}",
         "--engine=onnxruntime", "--fmr=1e-2", "--modes=fixed"]
  p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  lines = []
  for line in p.stderr:  # the engine says it is loading the model: the report has begun
    lines.append(line)
    if "model forward: onnxruntime" in line:
      break
  p.send_signal(signal.SIGTERM)
  err = "".join(lines) + p.stderr.read()
  assert p.wait(timeout=300) == 75, err[-2000:]
  stopped = [ln for ln in err.splitlines() if ln.startswith("stopped:")]
  assert len(stopped) == 1 and "Traceback" not in err, err[-2000:]
  assert "SIGTERM" in stopped[0] and "abandoned" in stopped[0]
  assert not [f for f in ("results.json", "auc_table.csv", "pauc_table.csv")
              if (out / f).exists()]
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  saved = json.loads((out / "results.json").read_text())
  assert saved["benchmarks"]["b"]["m"]["pairs_used"] == 599
