"""The documentation: the site builds with `mkdocs build --strict`, every public name has
an API entry, the runnable examples run, and README stays a front page.

Runnable examples are fenced `python` blocks preceded by `<!-- runnable -->`
(docs/contributing.md); the blocks of a page run in order in one namespace, in a fresh
process in an empty directory.
"""

import html.parser
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import jaxflow

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUNNABLE = re.compile(r"^<!-- runnable -->\n```python\n(.*?)^```$", re.M | re.S)
API_ENTRY = re.compile(r"^::: (jaxflow(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*$", re.M)


def _public_names() -> list[str]:
    return sorted(
        n for n in vars(jaxflow)
        if not n.startswith("_") and not isinstance(getattr(jaxflow, n), types.ModuleType)
    )


def _api_entries() -> set[str]:
    return {m for page in (DOCS / "api").glob("*.md") for m in API_ENTRY.findall(page.read_text())}


def _env() -> dict:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_every_public_name_has_an_api_entry():
    entries = _api_entries()
    missing = [n for n in _public_names() if f"jaxflow.{n}" not in entries]
    assert not missing, f"public names without a `::: jaxflow.NAME` entry in docs/api: {missing}"
    assert "jaxflow.problems" in entries
    for n in jaxflow.problems.__all__:  # the catalogue's functions, listed as its members
        assert n in (DOCS / "api" / "problems.md").read_text(), n
    # Every entry names something that exists (mkdocstrings would fail the build anyway).
    for entry in entries:
        obj = jaxflow
        for part in entry.split(".")[1:]:
            obj = getattr(obj, part)


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.imgs = set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src", ""))


def _parse(path: Path) -> _Ids:
    p = _Ids()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_site_builds_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python", "mkdocs_jupyter"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    # Run from an empty directory: the notebook plugin's cache goes there, not into the tree.
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(site)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr

    # The API pages rendered an entry (an anchor) for every public name.
    ids = set()
    for page in (site / "api").rglob("index.html"):
        ids |= _parse(page).ids
    missing = [n for n in _public_names() if f"jaxflow.{n}" not in ids]
    assert not missing, f"no rendered API entry for {missing}"
    # The notebooks are rendered with their stored outputs (figures as inline PNGs).
    nbs = sorted((site / "reproducing" / "notebooks").glob("0*/index.html"))
    assert len(nbs) == len(list((ROOT / "notebooks").glob("0*.ipynb"))) == 8
    for nb in nbs:
        assert any(src.startswith("data:image/png") for src in _parse(nb).imgs), nb
    # Math reaches the page as arithmatex spans for MathJax; MathJax is not needed to build.
    assert 'class="arithmatex"' in (site / "concepts" / "theory" / "index.html").read_text()
    assert (site / "assets" / "escaping_norms.png").is_file()


def _runnable_pages() -> dict[str, list[str]]:
    pages = {}
    for path in sorted(DOCS.rglob("*.md")):
        blocks = RUNNABLE.findall(path.read_text(encoding="utf-8"))
        if blocks:
            pages[str(path.relative_to(DOCS))] = blocks
    return pages


_RUNNER = textwrap.dedent(
    """
    import json, os, sys, traceback
    pages = json.load(open(sys.argv[1]))
    failed = []
    for page, blocks in pages.items():
        ns = {"__name__": "__main__"}
        os.makedirs(page.replace("/", "_"), exist_ok=True)
        os.chdir(page.replace("/", "_"))
        for i, code in enumerate(blocks):
            try:
                exec(compile(code, f"{page} (runnable block {i + 1})", "exec"), ns)
            except BaseException:
                failed.append(f"{page}, runnable block {i + 1}:\\n{traceback.format_exc()}")
                break
        os.chdir("..")
    print("\\n".join(failed))
    sys.exit(1 if failed else 0)
    """
)


def test_runnable_examples_run(tmp_path):
    import json

    pages = _runnable_pages()
    # The convention is in use where it matters (no vacuous pass).
    for page in ("getting-started.md", "guides/objective.md", "guides/nonsmooth.md",
                 "guides/scale.md", "concepts/report.md"):
        assert page in pages, page
    (tmp_path / "pages.json").write_text(json.dumps(pages))
    (tmp_path / "runner.py").write_text(_RUNNER)
    # Scans in the examples keep their compilation cache here, not in the user's cache dir.
    env = dict(_env(), JAXFLOW_COMPILATION_CACHE=str(tmp_path / "xla-cache"))
    proc = subprocess.run(
        [sys.executable, "runner.py", "pages.json"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]


def test_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 150, len(lines)
    # The two commands come first: install + first scan, then the tests.
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert first_block[:2] == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
        "jaxflow scan matrix-completion",
        'pip install -e ".[test]" && python -m pytest -n 2',
    ]
    # CI runs the README's test command (quietly).
    assert "python -m pytest -q -n 2" in (ROOT / ".ci" / "run").read_text()
    assert text.index("```bash") < text.index("## ")
    # Relative links and images point at files that exist (the docs pages, the figure).
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (ROOT / target).exists(), target
    assert "docs/assets/" in text
    assert 'pip install -e ".[docs]"' in text and "mkdocs" in text
