"""Choosing a quality threshold: the fraction discarded, counted by hand; FNMR and FMR before
and after discarding on pairs whose answer is worked out by hand; `evaluate --discard` on a
scores CSV alone and on a benchmark with FR embeddings."""

import json

import numpy as np
import pytest

from crfiqa_jax import data
from crfiqa_jax.evaluation import evaluate, threshold


def test_threshold_discards_at_most_the_fraction_and_keeps_ties():
  q = np.array([5.0, 1.0, 3.0, 2.0, 4.0, np.nan, 6.0, 7.0, 8.0, 9.0, 10.0])  # 10 finite
  t = threshold.discard_threshold(q, 0.2)
  assert (t.threshold, t.images, t.discarded) == (3.0, 10, 2)  # 1 and 2 go, 3 stays
  assert t.fraction_discarded == pytest.approx(0.2)
  t = threshold.discard_threshold(q, 0.25)   # floor(2.5) = 2: never more than asked
  assert (t.threshold, t.discarded) == (3.0, 2)
  t = threshold.discard_threshold(q, 0.0)
  assert (t.threshold, t.discarded) == (1.0, 0)
  ties = np.array([1.0, 2.0, 2.0, 2.0, 3.0])
  t = threshold.discard_threshold(ties, 0.4)  # would cut inside the tie: all three 2s kept
  assert (t.threshold, t.discarded) == (2.0, 1)
  with pytest.raises(ValueError, match="must lie in"):
    threshold.discard_threshold(q, 1.0)
  with pytest.raises(ValueError, match="no finite quality"):
    threshold.discard_threshold([np.nan], 0.1)


def test_fnmr_before_and_after_by_hand():
  # 6 images; qualities: image 0 is the worst.
  q = np.array([0.1, 0.9, 0.8, 0.7, 0.6, 0.5])
  a = np.array([0, 1, 2, 0, 1, 3, 4, 2, 3, 4, 5, 1])
  b = np.array([1, 2, 3, 2, 3, 4, 5, 5, 5, 1, 2, 5])
  gen = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], bool)
  sim = np.array([0.2, 0.9, 0.8, 0.3, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85])
  # 8 impostors; FMR 1/8 → accept at most 1: the threshold is the 2nd highest impostor,
  # 0.7, accepting s > 0.7: impostor 0.85 (FMR 1/8), genuine 0.9 and 0.8 (FNMR 2/4).
  m = threshold.fnmr_before_after(sim, gen, a, b, q, threshold=0.5, fmr=1 / 8)
  assert m["fr_threshold"] == 0.7
  assert (m["fnmr_before"], m["fmr_before"]) == (0.5, 1 / 8)
  # Discarding image 0 (q 0.1 < 0.5) removes genuine pairs 0-1 and 0-2 (both rejected):
  # FNMR 0/2; impostors left: all 8 (none has image 0), still one accepted.
  assert (m["fnmr_after"], m["fmr_after"]) == (0.0, 1 / 8)
  assert (m["pairs_kept"], m["genuine_kept"], m["genuine"], m["pairs"]) == (10, 2, 4, 12)


def test_evaluate_discard_on_a_scores_csv_alone(tmp_path, capsys):
  csv = tmp_path / "ref.csv"
  rows = [f"img{i}.png,{q}" for i, q in enumerate(np.arange(1, 21) / 10)]
  csv.write_text("path,quality\n" + "\n".join(rows + ["broken.png,"]) + "\n")
  assert evaluate.main([f"--quality=crfiqa={csv}", "--discard=0.05",
                        f"--out={tmp_path / 'o'}"]) == 0
  out = capsys.readouterr().out
  assert "crfiqa on" in out and "keep quality ≥ 0.2 " in out and "(1 discarded, 5.00%)" in out
  got = json.loads((tmp_path / "o" / "threshold.json").read_text())
  assert got[0]["threshold"] == 0.2 and got[0]["images"] == 20


def test_evaluate_discard_on_a_benchmark_with_embeddings(tmp_path, capsys):
  """16 identities with two images each; the lowest-quality image is the one whose genuine
  pair fails, so discarding 1/32 of the images takes FNMR from 1/16 to 0."""
  n = 32
  emb = np.eye(n + 1)[np.arange(n) // 2]
  emb[n - 1] = np.eye(n + 1)[n]       # the last image looks like nobody: its genuine pair fails
  q = np.linspace(1.0, 0.2, n)
  q[n - 1] = 0.1

  def gen():
    for i in range(n):
      yield {"image": data.encode_jpeg(np.full((16, 16, 3), 7 * i, np.uint8)),
             "label": i // 2, "metadata": {"path": f"p{i}.png"}}

  pairs = [[i, j, int(i // 2 == j // 2)] for i in range(n) for j in range(i + 1, n)]
  bench = tmp_path / "bench"
  data.write_records(bench, {"test": gen}, num_classes=n // 2, num_shards=1, progress=False,
                     metadata={"test_pairs": pairs})
  np.savez(tmp_path / "emb.npz", **{f"p{i}": emb[i] for i in range(n)})
  (tmp_path / "q.csv").write_text("path,quality\n" + "".join(f"p{i}.png,{q[i]}\n"
                                                              for i in range(n)))
  assert evaluate.main([f"--benchmark=b={bench}", f"--quality=mine={tmp_path / 'q.csv'}",
                        f"--fr=e={tmp_path / 'emb.npz'}", "--fmr=1e-2",
                        "--discard=0.03125"]) == 0
  out = capsys.readouterr().out
  assert f"mine on b: discarding 0.03125 of 32 images → keep quality ≥ {q[n - 2]:.6g} " in out
  # 480 impostor pairs, all at cosine 0: FMR 1e-2 accepts s > 0; 15 genuine pairs at 1.
  assert "FR e, FMR 1e-2: FNMR 0.0625 → 0.0000 (FMR 0 → 0; pairs kept 465/496, genuine " \
         "15/16)" in out, out


def test_discard_needs_a_csv_without_a_benchmark_and_others_need_their_flags(tmp_path,
                                                                             capsys):
  assert evaluate.main(["--quality=x=random", "--discard=0.1"]) == 2
  assert "needs a scores CSV" in capsys.readouterr().err
  assert evaluate.main(["--quality=x=random"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--benchmark, --fr, --out required" in err[0], err
