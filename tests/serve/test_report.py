"""The HTML report: the scores CSV read back, the extremes and the histogram counted by hand,
a page whose size does not grow at 100,000 rows, failures with their reasons, the evaluate
page, and the page opened in a real headless Chromium: no console error, the thumbnails
drawn (the pixels on screen are the crop's), and the lowest face shown is the CSV's lowest."""

import base64
import html
import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from crfiqa_jax.serve import report, score
from helpers import face_like_images


def test_scores_csv_and_extremes(tmp_path):
  f = tmp_path / "q.csv"
  f.write_text("path,quality,quality_0_100\na.png,0.5,50\nb.png,,\nc.png,-1,10\nd.png,2,90\n")
  names, q, cal = report.read_scores(f)
  assert names == ["a.png", "b.png", "c.png", "d.png"]
  np.testing.assert_array_equal(q, [0.5, np.nan, -1, 2])
  np.testing.assert_array_equal(cal, [50, np.nan, 10, 90])
  assert report.extremes(q, 12) == ([2, 0], [3])     # 3 scored: lower half, upper half
  q = np.array([5.0, 1, 9, 3, 7, 1, np.nan, 8])
  assert report.extremes(q, 2) == ([1, 5], [2, 7])   # ties in file order; NaN left out
  (tmp_path / "bad.csv").write_text("file,score\nx,1\n")
  with pytest.raises(ValueError, match="not a scores CSV"):
    report.read_scores(tmp_path / "bad.csv")


def test_histogram_counts_every_finite_quality():
  q = np.r_[np.linspace(0, 1, 101), np.nan]
  svg = report.histogram_svg(q, bins=10)
  counts = [int(c.replace(",", "")) for c in re.findall(r": ([\d,]+)</title>", svg)]
  assert len(counts) == 10 and sum(counts) == 101 and counts[0] == 10 and counts[-1] == 11


def _faces_folder(tmp_path, n=6):
  d = tmp_path / "faces"
  d.mkdir()
  imgs = face_like_images()[:n]
  for i, img in enumerate(imgs):
    Image.fromarray(img).save(d / f"face{i}.png")
  (d / "zz_broken.png").write_bytes(b"not an image")
  return d, imgs


def test_a_page_of_100000_rows_stays_small(tmp_path):
  d, _ = _faces_folder(tmp_path)
  files = sorted(str(p) for p in d.glob("face*.png"))
  rng = np.random.default_rng(0)
  q = rng.normal(size=100_000)
  names = [files[i % len(files)] if i % 97 else f"{d}/gone{i}.png" for i in range(len(q))]
  q[[i for i in range(len(q)) if not i % 97]] = np.nan
  page = report.scores_page(names, q, loader=report.Loader(), facts={"command": "x"})
  assert len(page) < 1_500_000  # 24 thumbnails, the histogram and 200 failure rows
  assert page.count('<figure class="face') == 2 * report.FACES
  n_failed = int(np.isnan(q).sum())
  assert page.count("<tr><td>") == report.MAX_LISTED
  assert f"… and {n_failed - report.MAX_LISTED:,} more" in page
  assert f"No face, or not readable ({n_failed:,})" in page
  # Reasons are found again for at most MAX_REASONS rows of an earlier run.
  assert page.count("unreadable (FileNotFoundError") == min(n_failed, report.MAX_REASONS)


def test_evaluate_page_embeds_tables_and_plots(tmp_path):
  out = tmp_path / "ev"
  (out / "lfw").mkdir(parents=True)
  (out / "results.json").write_text(json.dumps({"benchmarks": {"lfw": {}},
                                                "pair_quality": "min"}))
  (out / "auc_table.csv").write_text("method,lfw/arc/recomputed/FMR=1e-3\ncrfiqa,0.0123\n"
                                     "random,0.0456\n")
  buf = io.BytesIO()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
  (out / "lfw" / "arc_FMR1e-3_recomputed.png").write_bytes(buf.getvalue())
  page = report.write_evaluate_page(tmp_path / "p.html", out, command="evaluate ...")
  text = page.read_text()
  assert "lfw/arc/recomputed/FMR=1e-3</th><td class=\"n\">0.0123</td><td class=\"n\">0.0456" \
      in text
  assert base64.b64encode(buf.getvalue()).decode() in text
  with pytest.raises(FileNotFoundError, match="not an `evaluate --out` folder"):
    report.write_evaluate_page(tmp_path / "p.html", tmp_path, command="x")


def _browser():
  """A headless Chromium through selenium and Debian's chromedriver, or a skip naming what
  is missing. Both paths are given, so selenium never looks for a driver on the network."""
  try:
    from selenium import webdriver
  except ImportError:
    pytest.skip('needs selenium: pip install -e ".[test]"')
  chrome = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
  driver = shutil.which("chromedriver")
  if not chrome or not driver:
    pytest.skip("needs Chromium and its driver: apt-get install chromium chromium-driver")
  opts = webdriver.ChromeOptions()
  opts.binary_location = chrome
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,2400",
              "--force-device-scale-factor=1", "--disable-dev-shm-usage"):
    opts.add_argument(arg)
  opts.set_capability("goog:loggingOptions", {"browser": "ALL"})
  return webdriver.Chrome(options=opts, service=webdriver.ChromeService(driver))


def test_the_page_in_a_real_browser(tiny_model, tmp_path):
  path, _, _ = tiny_model
  d, imgs = _faces_folder(tmp_path)
  page = tmp_path / "page.html"
  assert score.main([f"--checkpoint={path}", f"--input={d}", f"--output={tmp_path / 'q.csv'}",
                     "--engine=jax", f"--report={page}"]) == 1  # the broken file fails
  names, q, _ = report.read_scores(tmp_path / "q.csv")
  browser = _browser()
  try:
    browser.get(page.as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    from selenium.webdriver.common.by import By
    figures = browser.find_elements(By.CSS_SELECTOR, "figure.face")
    assert len(figures) == len(imgs)
    for fig in figures:
      img = fig.find_element(By.TAG_NAME, "img")
      assert browser.execute_script("return arguments[0].complete && "
                                    "arguments[0].naturalWidth", img) == 112
      shown = np.asarray(Image.open(io.BytesIO(img.screenshot_as_png)).convert("RGB"),
                         np.float64)
      want = imgs[int(re.search(r"face(\d)", fig.get_attribute("data-path")).group(1))]
      assert shown.shape == want.shape and shown.std() > 10  # drawn, not blank
      assert np.abs(shown - want).max() <= 2, np.abs(shown - want).max()  # this very crop
    lowest = browser.find_element(By.CSS_SELECTOR, "figure.face.lowest[data-rank='0']")
    assert lowest.get_attribute("data-path") == names[int(np.nanargmin(q))]
    assert "zz_broken.png" in browser.find_element(By.CSS_SELECTOR, "table.failures").text
  finally:
    browser.quit()
  text = page.read_text()
  assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
  assert "https://" not in text and "<script" not in text  # nothing fetched, offline
  assert html.escape(f"--report={page}") in text


def test_report_command_on_an_earlier_csv(tiny_model, tmp_path, capsys):
  path, _, _ = tiny_model
  d, _ = _faces_folder(tmp_path, n=3)
  assert score.main([f"--checkpoint={path}", f"--input={d}", f"--output={tmp_path / 'q.csv'}",
                     "--engine=jax"]) == 1
  assert report.main([str(tmp_path / "q.csv"), "--model=tiny"]) == 0
  text = (tmp_path / "q.html").read_text()
  assert "zz_broken.png" in text and "unreadable (" in text and ">tiny<" in text
  assert report.main([str(tmp_path / "nothing.csv")]) == 2
  assert "neither a scores CSV" in capsys.readouterr().err
