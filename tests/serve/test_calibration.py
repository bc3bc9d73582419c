import numpy as np
import pytest

from crfiqa_jax.evaluation import erc
from crfiqa_jax.serve import calibration


def test_quartiles_map_to_25_50_75_and_map_is_strictly_increasing():
  cal = calibration.fit(np.arange(1.0, 10.0))  # quartiles 3, 5, 7 (linear interpolation)
  np.testing.assert_allclose(cal([3.0, 5.0, 7.0]), [25.0, 50.0, 75.0], rtol=0, atol=1e-12)
  assert cal.median == 5.0 and np.isclose(cal.scale, 4 / (2 * np.log(3)))
  grid = cal.median + cal.scale * np.linspace(-10, 10, 200_001)  # steps of 1e-4 scales
  out = cal(grid)
  assert (np.diff(out) > 0).all() and out.min() > 0 and out.max() < 100
  assert np.isnan(cal(np.nan))
  with pytest.raises(ValueError, match="quartiles coincide"):
    calibration.fit([1.0, 1.0, 1.0, 1.0, 2.0])
  with pytest.raises(ValueError, match="at least 4"):
    calibration.fit([1.0, np.nan, 2.0])


def test_every_erc_is_unchanged_and_a_non_monotone_map_would_change_it():
  rng = np.random.default_rng(0)
  n_img, n_pairs = 300, 4000
  quality = rng.standard_t(3, n_img) * 0.4 + 1.7  # heavy tails, as raw CR outputs
  quality[:20] = quality[20]  # ties
  a, b = rng.integers(0, n_img, (2, n_pairs))
  genuine = rng.random(n_pairs) < 0.3
  sim = np.where(genuine, 0.5, 0.1) + 0.3 * rng.standard_normal(n_pairs) \
      + 0.1 * np.minimum(quality[a], quality[b])
  cal = calibration.fit(quality[100:])
  for mode in erc.MODES:
    raw = erc.error_versus_reject(sim, genuine, np.minimum(quality[a], quality[b]),
                                  fmr=[1e-2, 1e-3], threshold=mode)
    mapped = cal(quality)
    got = erc.error_versus_reject(sim, genuine, np.minimum(mapped[a], mapped[b]),
                                  fmr=[1e-2, 1e-3], threshold=mode)
    np.testing.assert_array_equal(got, raw)
    folded = np.abs(quality - cal.median)  # not monotone: must change the curve
    other = erc.error_versus_reject(sim, genuine, np.minimum(folded[a], folded[b]),
                                    fmr=[1e-2, 1e-3], threshold=mode)
    assert not np.array_equal(other, raw)


def test_stored_beside_the_model_and_fitted_from_a_scores_csv(tmp_path):
  ckpt = tmp_path / "export"
  ckpt.mkdir()
  with pytest.raises(FileNotFoundError, match="python -m crfiqa_jax.calibration"):
    calibration.load(ckpt)
  rows = "".join(f"img{i}.jpg,{v}\n" for i, v in enumerate(range(1, 10)))
  (tmp_path / "ref.csv").write_text("path,quality\n" + rows + "broken.jpg,\n")
  assert calibration.main(["--checkpoint", str(ckpt), "--reference",
                           str(tmp_path / "ref.csv")]) == 0
  cal = calibration.load(ckpt)
  assert (ckpt / "calibration.json").is_file() and cal.num_reference == 9
  np.testing.assert_allclose(cal(5.0), 50.0)
  assert calibration.path_for(tmp_path / "m.pth").name == "m.pth.calibration.json"
  (ckpt / "calibration.json").write_text('{"kind": "logistic", "median": 1, "scale": -2}')
  with pytest.raises(ValueError, match="positive scale"):
    calibration.load(ckpt)


def test_score_calibrated_adds_the_0_100_column(tiny_model, tmp_path, capsys):
  import csv

  from PIL import Image

  from crfiqa_jax.serve import score
  ckpt, _, _ = tiny_model
  rng = np.random.default_rng(0)
  for i in range(5):
    Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(
        tmp_path / f"{i}.png")
  args = [f"--checkpoint={ckpt}", f"--input={tmp_path}", f"--output={tmp_path / 'q.csv'}"]
  calibration.path_for(ckpt).unlink(missing_ok=True)
  assert score.main(args + ["--calibrated"]) == 2
  assert "python -m crfiqa_jax.calibration" in capsys.readouterr().err
  assert score.main(args) == 0
  raw = calibration.read_scores(tmp_path / "q.csv")
  assert calibration.main([f"--checkpoint={ckpt}", f"--reference={tmp_path / 'q.csv'}"]) == 0
  try:
    assert score.main(args + ["--calibrated"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "q.csv")))
    m, s = np.median(raw), (np.quantile(raw, 0.75) - np.quantile(raw, 0.25)) / np.log(9)
    np.testing.assert_allclose([float(r["quality_0_100"]) for r in rows],
                               100 / (1 + np.exp(-(raw - m) / s)), rtol=1e-6)
    np.testing.assert_allclose([float(r["quality"]) for r in rows], raw, rtol=1e-6)
  finally:
    calibration.path_for(ckpt).unlink()  # the model fixture is shared
