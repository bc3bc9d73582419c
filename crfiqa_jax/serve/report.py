"""One self-contained HTML page to look at a run: `score --report=PAGE.html`, `evaluate
--report=PAGE.html`, or afterwards `python -m crfiqa_jax.report SCORES.csv|EVALUATE_OUT`.

A scores page holds the command, model, engine and date; counts and quantiles of the
qualities; their histogram (inline SVG); the lowest- and highest-quality faces as
thumbnails of the aligned crops the model saw, with quality and file name; and the rows
with no quality, with the reason. An evaluate page holds the command, date, the ERC/EDC
plots (embedded PNGs) and the AUC and pAUC tables.

Everything is inside the one file (images as data: URIs, no script, no font or style
sheet fetched), so it opens offline and can be mailed. Its size does not grow with the
number of rows: a 100,000-row CSV gives the same page as a 100-row one, the summary, the
`FACES` extremes and at most `MAX_LISTED` failures.

Thumbnails are made again from the files named in the CSV, through the same loaders as
`score`: aligned inputs are read as they are; with `detect` (rows of `score --detect`) each
photo is detected and aligned again (only the extremes and the failures, so a few dozen
photos), and a row `PHOTO#K` of `--all-faces` takes the photo's face K. The reason of a
failed row comes from the run when the page is written by `score`; for a CSV read
afterwards the first MAX_REASONS failed rows are loaded again to find it.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from crfiqa_jax import cli
from crfiqa_jax.data import faces, sources

FACES = 12          # lowest and highest faces shown, each
MAX_LISTED = 200    # failed rows listed (the rest counted)
MAX_REASONS = 50    # failed rows of an earlier run loaded again for their reason
THUMB = 112         # thumbnail side in pixels
QUANTILES = (0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1)
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.faces{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:120px;font-size:.75em;word-break:break-all}
figure img{width:112px;height:112px;object-fit:contain;background:#eee;display:block}
.bar{fill:#4a78b5}.axis{stroke:#555}svg text{font-size:11px;fill:#333}
.plots img{max-width:100%;margin:6px 0}code{background:#f3f3f3;padding:1px 3px}
"""


def read_scores(path) -> tuple[list[str], np.ndarray, np.ndarray | None]:
  """(row names, quality [N] with NaN for empty cells, quality_0_100 [N] or None) of a
  `score` CSV."""
  names, q, cal = [], [], []
  with open(path, newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if not header or header[:2] != ["path", "quality"]:
      raise ValueError(f"{path} is not a scores CSV (expected the header path,quality, as "
                       "`score` writes)")
    has_cal = len(header) > 2 and header[2] == "quality_0_100"
    for n, row in enumerate(reader, 2):
      if len(row) < 2:
        raise ValueError(f"{path}:{n}: expected path,quality, got {row}")
      names.append(row[0])
      try:
        q.append(float(row[1]) if row[1].strip() else np.nan)
        cal.append(float(row[2]) if has_cal and row[2].strip() else np.nan)
      except ValueError:
        raise ValueError(f"{path}:{n}: quality {row[1]!r} is not a number") from None
  return names, np.array(q, np.float64), np.array(cal, np.float64) if has_cal else None


def extremes(quality: np.ndarray, k: int = FACES) -> tuple[list[int], list[int]]:
  """(the k lowest rows, lowest first; the k highest, highest first) among the finite
  qualities, ties in file order. They never overlap: with fewer than 2k rows, the lower
  half (its extra middle row included) and the upper half."""
  ok = np.flatnonzero(np.isfinite(quality))
  order = ok[np.argsort(quality[ok], kind="stable")]
  k = min(k, (len(order) + 1) // 2)
  return order[:k].tolist(), order[k:][::-1][:k].tolist()


class Loader:
  """The crop `score` saw for a row name (module docstring): `load(name)` → uint8 [H, W, 3],
  or raises sources.SkipImage / faces.NoFace with the reason."""

  def __init__(self, *, detect: bool = False, face: str = "center", image_size: int = 112):
    self.detect, self.face, self.size = detect, face, image_size

  def load(self, name: str) -> np.ndarray:
    if not self.detect:
      return sources.files_source([name]).load(0)
    photo, k = name, None
    m = re.fullmatch(r"(.*)#(\d+)", name)
    if m and not Path(name).exists():
      photo, k = m.group(1), int(m.group(2))
    try:
      image = faces.load_photo(photo)
    except Exception as e:  # the same reason `score` gives
      raise faces.NoFace(f"unreadable ({type(e).__name__}: {e})") from None
    boxes, _, marks = faces.detect_faces(image)
    if not len(boxes) or (k is not None and k >= len(boxes)):
      raise faces.NoFace(faces.NO_FACE)
    pick = k if k is not None else faces.choose_face(boxes, image.shape, self.face)
    return faces.align(image, marks[pick], self.size)


def data_uri(image: np.ndarray, side: int = THUMB) -> str:
  """A PNG data: URI of the image (lossless: the crop's own pixels, no added artefacts),
  its longest side scaled down to `side` pixels when larger."""
  im = Image.fromarray(np.asarray(image, np.uint8))
  im.thumbnail((side, side), Image.BILINEAR)
  buf = io.BytesIO()
  im.save(buf, format="PNG", optimize=True)
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def histogram_svg(quality: np.ndarray, bins: int | None = None, width: int = 640,
                  height: int = 220) -> str:
  """An inline SVG histogram of the finite qualities (each bar's count in its tooltip);
  by default 2·sqrt(N) bins, from 5 to 40."""
  q = quality[np.isfinite(quality)]
  if not len(q):
    return "<p>No finite quality to plot.</p>"
  bins = bins or int(min(40, max(5, math.ceil(2 * math.sqrt(len(q))))))
  counts, edges = np.histogram(q, bins=bins)
  left, bottom, top = 50, 30, 10
  w, h = width - left - 10, height - bottom - top
  bw, peak = w / bins, max(int(counts.max()), 1)
  parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'role="img" aria-label="histogram of the qualities">']
  for i, c in enumerate(counts):
    bh = h * c / peak
    parts.append(f'<rect class="bar" x="{left + i * bw:.1f}" y="{top + h - bh:.1f}" '
                 f'width="{max(bw - 1, 1):.1f}" height="{bh:.1f}"><title>'
                 f'{edges[i]:.4g} to {edges[i + 1]:.4g}: {c:,}</title></rect>')
  y0 = top + h
  parts += [f'<line class="axis" x1="{left}" y1="{y0}" x2="{left + w}" y2="{y0}"/>',
            f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{y0}"/>',
            f'<text x="{left}" y="{y0 + 16}">{edges[0]:.4g}</text>',
            f'<text x="{left + w}" y="{y0 + 16}" text-anchor="end">{edges[-1]:.4g}</text>',
            f'<text x="{left + w / 2}" y="{y0 + 26}" text-anchor="middle">quality</text>',
            f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{peak:,}</text>',
            f'<text x="{left - 6}" y="{y0}" text-anchor="end">0</text>', "</svg>"]
  return "".join(parts)


def _e(x) -> str:
  return html.escape(str(x))


def _page(title: str, facts: dict, body: list[str]) -> str:
  rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts.items())
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          f"<title>{_e(title)}</title><link rel=\"icon\" href=\"data:,\">"
          f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>"
          f"<table class=\"facts\">{rows}</table>" + "".join(body) + "</body></html>\n")


def _figure(kind: str, rank: int, name: str, q: float, cal: float | None, uri: str | None,
            why: str | None) -> str:
  img = (f'<img src="{uri}" alt="{_e(Path(name).name)}" width="{THUMB}" height="{THUMB}">'
         if uri else f'<div class="missing">not shown: {_e(why)}</div>')
  extra = f" · {cal:.1f}/100" if cal is not None and np.isfinite(cal) else ""
  return (f'<figure class="face {kind}" data-rank="{rank}" data-quality="{q!r}" '
          f'data-path="{_e(name)}">{img}<figcaption><b>{q:.4g}</b>{extra}<br>'
          f'{_e(Path(name).name)}</figcaption></figure>')


def scores_page(names: Sequence[str], quality: np.ndarray, *, loader: Loader,
                calibrated: np.ndarray | None = None, failures: dict[str, str] | None = None,
                facts: dict | None = None, k: int = FACES) -> str:
  """The HTML of a scores page (module docstring). failures: {row name: reason} known from
  the run; the other failed rows' reasons are found again (at most MAX_REASONS)."""
  quality = np.asarray(quality, np.float64)
  n, ok = len(names), np.isfinite(quality)
  body = ["<h2>Summary</h2>",
          f"<p>{int(ok.sum()):,} of {n:,} rows scored; {n - int(ok.sum()):,} without a "
          "quality. Quality is the model's raw output: higher means more useful for "
          "recognition; its scale depends on the model.</p>"]
  if ok.any():
    qs = np.quantile(quality[ok], QUANTILES)
    heads = ["min" if p == 0 else "max" if p == 1 else f"{p:.0%}" for p in QUANTILES]
    body.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr><tr>"
                + "".join(f'<td class="n">{v:.4g}</td>' for v in qs) + "</tr></table>")
  body += ["<h2>Histogram</h2>", histogram_svg(quality)]
  low, high = extremes(quality, k)
  for kind, title, rows in (("lowest", "Lowest quality", low),
                            ("highest", "Highest quality", high)):
    figs = []
    for rank, i in enumerate(rows):
      try:
        uri, why = data_uri(loader.load(names[i])), None
      except (sources.SkipImage, faces.NoFace, OSError, ValueError) as e:
        uri, why = None, str(e)
      c = None if calibrated is None else float(calibrated[i])
      figs.append(_figure(kind, rank, names[i], float(quality[i]), c, uri, why))
    body += [f"<h2>{title} ({len(rows)})</h2>", f'<div class="faces {kind}">{"".join(figs)}</div>']
  failed = np.flatnonzero(~ok)
  known, found = dict(failures or {}), 0
  items = []
  for i in failed[:MAX_LISTED]:
    why = known.get(names[i])
    if why is None and found < MAX_REASONS:
      found += 1
      try:
        loader.load(names[i])
        why = "no quality in the CSV (the file loads now)"
      except (sources.SkipImage, faces.NoFace) as e:
        why = str(e)
    items.append(f"<tr><td>{_e(names[i])}</td><td>{_e(why or 'not recorded')}</td></tr>")
  body.append(f"<h2>No face, or not readable ({len(failed):,})</h2>")
  if items:
    more = (f"<p>… and {len(failed) - MAX_LISTED:,} more (the CSV's rows with an empty "
            "quality).</p>" if len(failed) > MAX_LISTED else "")
    body.append('<table class="failures"><tr><th>file</th><th>reason</th></tr>'
                + "".join(items) + "</table>" + more)
  else:
    body.append("<p>None: every row has a quality.</p>")
  return _page("Face image quality report", facts or {}, body)


def _date() -> str:
  return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def write_scores_page(page, scores_csv, *, command: str, model: str = "not recorded",
                      engine: str = "not recorded", detect: bool = False,
                      face: str = "center", image_size: int = 112,
                      failures: dict[str, str] | None = None) -> Path:
  """Writes the scores page of `scores_csv` to `page`; returns its path."""
  names, quality, cal = read_scores(scores_csv)
  facts = {"command": command, "model": model, "engine": engine, "scores": str(scores_csv),
           "faces": "detected and aligned again from the photos (MTCNN)" if detect
           else "the files as given (aligned crops)", "date": _date()}
  text = scores_page(names, quality, calibrated=cal, failures=failures, facts=facts,
                     loader=Loader(detect=detect, face=face, image_size=image_size))
  return _write(page, text)


def _write(page, text: str) -> Path:
  page = Path(page)
  page.parent.mkdir(parents=True, exist_ok=True)
  page.write_text(text, encoding="utf-8")
  return page


def _csv_table(path: Path) -> str:
  """A table CSV of `evaluate` (rows: quality methods), transposed: one row per column."""
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  if not rows:
    return ""
  head, body = rows[0], rows[1:]
  out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in [head[0]] + [r[0] for r in body])
         + "</tr>"]
  for j in range(1, len(head)):
    cells = "".join(f'<td class="n">{_e(r[j]) if j < len(r) else ""}</td>' for r in body)
    out.append(f"<tr><th>{_e(head[j])}</th>{cells}</tr>")
  return "".join(out) + "</table>"


def write_evaluate_page(page, out_dir, *, command: str) -> Path:
  """Writes the page of an `evaluate` output folder: its tables and every plot."""
  out_dir = Path(out_dir)
  if not (out_dir / "results.json").is_file():
    raise FileNotFoundError(f"{out_dir} has no results.json: not an `evaluate --out` folder")
  results = json.loads((out_dir / "results.json").read_text())
  facts = {"command": command, "results": str(out_dir), "date": _date(),
           "benchmarks": ", ".join(results.get("benchmarks", {})),
           "pair quality": results.get("pair_quality", "min")}
  body = []
  for name, title in (("auc_table.csv", "ERC AUC (the CR-FIQA paper's convention)"),
                      ("pauc_table.csv", "FNMR-EDC pAUC (the standard convention)")):
    if (out_dir / name).is_file():
      body += [f"<h2>{title}</h2>", _csv_table(out_dir / name)]
  for folder in sorted(p for p in out_dir.iterdir() if p.is_dir()):
    pngs = sorted(folder.glob("*.png"))
    if pngs:
      body.append(f"<h2>Plots: {_e(folder.name)}</h2><div class=\"plots\">")
      body += [f'<figure><img alt="{_e(p.stem)}" src="data:image/png;base64,'
               f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{_e(p.stem)}'
               "</figcaption></figure>" for p in pngs]
      body.append("</div>")
  return _write(page, _page("Quality evaluation report", facts, body))


def main(argv=None) -> int:
  """Exit code per crfiqa_jax.cli: 0 written, 2 a usage or input error."""
  p = cli.parser("crfiqa_jax.report", __doc__,
                 "python -m crfiqa_jax.report scores.csv --out=scores.html\n"
                 "python -m crfiqa_jax.report q.csv --detect --out=q.html   # rows of score "
                 "--detect\npython -m crfiqa_jax.report reports/ --out=reports.html   # an "
                 "evaluate --out folder")
  p.add_argument("scores", help="a scores CSV written by `score`, or an `evaluate --out` "
                                "folder")
  p.add_argument("--out", default=None, metavar="PAGE.html",
                 help="the page to write (default: beside the input, .html)")
  p.add_argument("--detect", action="store_true",
                 help="the rows are raw photos (score --detect): detect and align the shown "
                      "faces again ([detect] extra)")
  p.add_argument("--face", choices=faces.RULES, default="center",
                 help="with --detect, which face of a photo with several (as score used)")
  p.add_argument("--model", default="not recorded", help="the model to name on the page")
  argv = list(sys.argv[1:] if argv is None else argv)
  args = p.parse_args(argv)
  cli.quiet_logging()

  def body():
    src = Path(args.scores)
    out = Path(args.out) if args.out else (src / "report.html" if src.is_dir()
                                           else src.with_suffix(".html"))
    command = " ".join([cli.prog("crfiqa_jax.report"), *argv])
    if src.is_dir():
      write_evaluate_page(out, src, command=command)
    elif src.is_file():
      write_scores_page(out, src, command=command, model=args.model, detect=args.detect,
                        face=args.face)
    else:
      raise FileNotFoundError(f"{src} is neither a scores CSV nor an evaluate --out folder")
    print(f"wrote {out}", file=sys.stderr)

  return cli.run(body)
