"""Readers of evaluation inputs: pairs.txt benchmarks, quality CSVs and embedding files,
their key matching, and clear errors for bad files."""

import numpy as np
import pytest
from PIL import Image

from crfiqa_jax.evaluation import benchmarks


@pytest.mark.parametrize("content,match", [
    ("file,score\na.png,1\n", "expected"),
    ("path,quality\na.png,nan\n", "not finite"),
    ("path,quality\na.png,1\na.png,2\n", "duplicate"),
    ("path,quality\na.png,high\n", "not a number"),
])
def test_bad_quality_files(tmp_path, content, match):
  f = tmp_path / "q.csv"
  f.write_text(content)
  with pytest.raises(ValueError, match=match):
    benchmarks.load_quality_csv(f)


def test_pairs_txt_benchmark_finds_images_with_or_without_extension(tmp_path):
  root = tmp_path / "xq"
  (root / "images").mkdir(parents=True)
  for name in ("a", "b"):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "images" / f"{name}.JPG")
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "c.png")
  (root / "pairs.txt").write_text("# a comment\na b 1\nb,c.png,0\n")
  bench = benchmarks.load_benchmark(f"x={root}")
  assert bench.name == "x" and bench.keys == ["a", "b", "c"]
  np.testing.assert_array_equal(bench.a, [0, 1])
  np.testing.assert_array_equal(bench.b, [1, 2])
  np.testing.assert_array_equal(bench.genuine, [True, False])
  assert bench.source.load(2).shape == (4, 4, 3)
  (root / "pairs.txt").write_text("a b maybe\n")
  with pytest.raises(ValueError, match="pairs.txt:1: expected 'A B 0\\|1'"):
    benchmarks.load_benchmark(str(root))
  (root / "pairs.txt").write_text("a zz 1\n")
  with pytest.raises(FileNotFoundError, match="'zz'"):
    benchmarks.load_benchmark(str(root))


def test_quality_and_embedding_keys_match_relative_paths(tmp_path):
  root = tmp_path / "bench"
  q = tmp_path / "q.csv"
  q.write_text(f"path,quality\n{root / 'images' / 'x' / '1.png'},0.5\n{root / '2.jpg'},\n")
  assert benchmarks.load_quality_csv(q, root) == {"x/1": 0.5}  # an empty quality: skipped
  (tmp_path / "lines.txt").write_text("x/1.png 0.25\n")
  assert benchmarks.load_quality_csv(tmp_path / "lines.txt") == {"x/1": 0.25}
  np.savez(tmp_path / "e.npz", **{"x/1.png": np.ones(3), "y": np.zeros(3)})
  emb = benchmarks.load_embeddings(tmp_path / "e.npz")
  assert set(emb) == {"x/1", "y"} and emb["x/1"].shape == (3,)
  np.savez(tmp_path / "mixed.npz", a=np.ones(3), b=np.ones(4))
  with pytest.raises(ValueError, match="mix dimensions"):
    benchmarks.load_embeddings(tmp_path / "mixed.npz")
  np.savez(tmp_path / "nan.npz", a=np.array([np.nan, 1.0]))
  with pytest.raises(ValueError, match="NaN"):
    benchmarks.load_embeddings(tmp_path / "nan.npz")
