"""The README and the documentation site (`mkdocs.yml`, `docs/`) cannot rot.

- README.md stays a page a user reads: at most 12,000 characters; its install and test commands are `.ci/run`'s.
- `mkdocs build --strict` succeeds with no warning (a broken link or anchor is one), into a temporary folder, and
  the site loads no web fonts and no external scripts.
- Every code reference (inline code and fenced blocks) names something real: a path under `hf_resnet/`, `tests/`,
  `benchmarks/`, `recipes/` or `docs/` exists; a dotted `hf_resnet.x.y` imports or resolves; a recipe given to
  `--config` (or written alone, as `smoke/digits_smoke`) is shipped; `hf-resnet <word>` is a sub-command; the
  links of README.md and benchmarks/README.md (outside the site) exist; docs/architecture.md lists every module.
- Every command that can run offline is run, copied out of the Markdown.

Which commands run
------------------
Commands are the lines of fenced blocks tagged ```bash in README.md, docs/*.md and benchmarks/README.md; blocks
tagged text, python or yaml are never run, and inline code is only checked as a reference. A line ending in `\\`
continues on the next; a `#` at the start of a line or after a space starts a comment. Each command gets the first
rule of RULES whose pattern it contains:

    skip  needs a CUDA GPU               benchmarks/gpu.py, --gpu_decode true, --device cuda, --bf16/--fp16 true
    skip  several processes or machines  accelerate launch (tests/test_multiprocess.py, tests/test_scale_out.py)
    skip  a benchmark, run by hand       python benchmarks/...
    skip  builds this site               mkdocs ... (test_site_builds_strictly does)
    skip  install or the test suite      pip, -m venv, pytest, ruff, echo, git (what .ci/run does)
    run   help                           hf-resnet [COMMAND] --help | -h | --help-all
    skip  needs the Hub                  microsoft/..., ILSVRC/..., --config resnet50/..., --push_to_hub true,
                                         --dataset_name other than bundled:
    skip  your own data                  a placeholder path: my/..., data/..., /data/..., /shared/..., /path/...
    run   offline                        hf-resnet train --config smoke/..., hf-resnet evaluate|predict|export
                                         outputs/digits-smoke (what the smoke run trained), hf-resnet audit tests/...

A command that no rule matches fails test_every_command_has_a_rule: change the command or add a rule.

The commands to run run once each, however many pages show them (`.venv/bin/hf-resnet` and `hf-resnet` count as
one), in the order of README.md, then mkdocs.yml's nav, then benchmarks/README.md, in one temporary folder: so a
page may use `outputs/digits-smoke` once an earlier command has trained it. That folder holds links to the
virtual environment as `.venv` and to the repository's `tests/` (so `.venv/bin/hf-resnet` and `tests/data/photos`
resolve as in a clone) and is HOME (so `~/.cache/hf_resnet`, where the smoke run renders the bundled digits, is in
it); HF_HUB_OFFLINE=1, and the virtual environment's bin/ first on PATH. Each must exit 0. Nothing is appended to
a command. The skipped commands are test_skipped_by_rule's cases: `pytest -ra` lists each with its rule.
"""

import argparse
import importlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO

README = REPO / "README.md"
BENCHMARKS = REPO / "benchmarks" / "README.md"
DOCS = REPO / "docs"
README_LIMIT = 12_000

RUN, SKIP = "run", "skip"
RULES = [
    (SKIP, r"benchmarks/gpu\.py|--gpu_decode true|--device cuda|--bf16 true|--fp16 true", "needs a CUDA GPU"),
    (SKIP, r"\baccelerate launch\b", "launches several processes or machines (tests/test_multiprocess.py and "
     "tests/test_scale_out.py launch them)"),
    (SKIP, r"(^|\s)python3? benchmarks/", "a benchmark, run by hand (minutes; figures in docs/performance.md)"),
    (SKIP, r"\bmkdocs\b", "builds this site, as test_site_builds_strictly does"),
    (SKIP, r"\bpip\b|-m venv\b|\bpytest\b|\bruff\b|^echo |^git ", "installs the package or runs the test suite "
     "(what .ci/run does)"),
    (RUN, r"^(\.venv/bin/)?hf-resnet( [a-z-]+)? (-h|--help|--help-all)$", "help"),
    (SKIP, r"microsoft/|ILSVRC/|--config resnet50/|--push_to_hub true|--dataset_name (?!bundled:)",
     "needs the Hub (weights, a Hub dataset or an upload)"),
    (SKIP, r"(^|\s)(my|data|/data|/shared|/path)/", "runs on your own data (a placeholder path)"),
    (RUN, r"^(\.venv/bin/)?hf-resnet (train --config smoke/|(evaluate|predict|export) outputs/digits-smoke "
     r"|audit tests/)", "offline"),
]


def site_pages() -> list[Path]:
    """The site's pages in the nav's order."""
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    return [DOCS / next(iter(entry.values())) for entry in nav]


def pages() -> list[Path]:
    """README.md, the site's pages, then benchmarks/README.md: the order the commands run in."""
    return [README, *site_pages(), BENCHMARKS]


def markdown_files() -> list[Path]:
    return [README, BENCHMARKS, *sorted(DOCS.rglob("*.md"))]


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(tag, line number of the block's first line, lines) of every fenced block."""
    blocks, tag, start, lines = [], None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)\s*$", line)
        if fence and tag is None:
            tag, start, lines = fence.group(1), number + 1, []
        elif fence and line.strip() == "```":
            blocks.append((tag, start, lines))
            tag = None
        elif tag is not None:
            lines.append(line)
    return blocks


def commands_in(path: Path) -> list[tuple[str, str]]:
    """(location, command) of each command in the file's ```bash blocks, continuations joined, comments dropped."""
    found = []
    for tag, start, lines in fenced_blocks(path.read_text()):
        if tag != "bash":
            continue
        command, first = "", None
        for offset, line in enumerate(lines):
            line = re.sub(r"(^|\s)#.*$", "", line).rstrip()
            if not line and not command:
                continue
            first = start + offset if first is None else first
            if line.endswith("\\"):
                command += line[:-1].strip() + " "
                continue
            command = (command + line.strip()).strip()
            if command:
                found.append((f"{path.relative_to(REPO)}:{first}", command))
            command, first = "", None
    return found


def classify(command: str) -> tuple[str, str] | None:
    for action, pattern, reason in RULES:
        if re.search(pattern, command):
            return action, reason
    return None


def all_commands() -> list[tuple[str, str, tuple[str, str] | None]]:
    return [(where, command, classify(command)) for path in pages() for where, command in commands_in(path)]


def same_command(command: str) -> str:
    return " ".join(re.sub(r"(^|\s)\.venv/bin/", r"\1", command).split())


def code_in(text: str) -> list[str]:
    """The contents of every fenced block and every inline code span."""
    blocks = ["\n".join(lines) for _, _, lines in fenced_blocks(text)]
    prose = re.sub(r"^\s*```.*?^\s*```\s*$", "", text, flags=re.S | re.M)
    return blocks + re.findall(r"`([^`]+)`", prose)


def all_code() -> list[tuple[str, str]]:
    return [(path.relative_to(REPO).as_posix(), code)
            for path in markdown_files() for code in code_in(path.read_text())]


# -- a. the README's size, and its set-up commands are CI's ---------------------------------------------------------

def test_readme_is_short():
    assert len(README.read_text()) <= README_LIMIT, "move detail into docs/ and link to it"


def test_readme_install_and_test_commands_are_what_ci_runs():
    readme = README.read_text()
    steps = [line.split("#")[0].strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
             if "README step 1" in line]
    assert len(steps) == 2
    for step in steps:
        assert step in readme, step


# -- b. the site builds strictly, offline-safe ----------------------------------------------------------------------

def test_site_builds_strictly(tmp_path):
    pytest.importorskip("material", reason='mkdocs-material is not installed: pip install -e ".[docs]"')
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    html = "\n".join(p.read_text() for p in site.rglob("*.html"))
    assert "fonts.googleapis" not in html and "fonts.gstatic" not in html
    assert not re.search(r"<script[^>]+src=\"(https?:)?//", html), "an external script"
    assert not re.search(r"<link[^>]+rel=\"stylesheet\"[^>]+href=\"(https?:)?//", html), "an external stylesheet"
    for page in site_pages():
        assert (site / page.relative_to(DOCS).with_suffix(".html")).is_file(), page


# -- c. code references --------------------------------------------------------------------------------------------

def test_paths_exist():
    missing = []
    pattern = re.compile(r"(?<![\w./~-])((?:hf_resnet|tests|benchmarks|recipes|docs)/[\w./-]*)")
    for where, code in all_code():
        for match in pattern.finditer(code):
            if code[match.end():match.end() + 1] in ("<", "{", "*"):  # a pattern such as tests/test_<module>.py
                continue
            path = match.group(1).rstrip(".")
            if not (REPO / path).exists():
                missing.append(f"{where}: {path}")
    assert missing == []


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        try:
            for name in parts[i:]:
                target = getattr(target, name)
        except AttributeError:
            return False
        return True
    return False


def test_dotted_names_resolve():
    names = {(where, name) for where, code in all_code()
             for name in re.findall(r"(?<![\w./-])hf_resnet(?:\.[A-Za-z_]\w*)+", code)}
    assert names, "the pattern finds the names"
    assert sorted(f"{where}: {name}" for where, name in names if not resolves(name)) == []


def test_recipes_are_shipped():
    from hf_resnet.parser import shipped_recipes

    shipped, spaces = set(shipped_recipes()), set(shipped_recipes("space"))  # spaces: hf-resnet sweep --space
    folders = "|".join(sorted({name.split("/")[0] for name in shipped}))
    unknown = []
    for where, code in all_code():
        named = [(name, shipped) for name in re.findall(r"--config[ =]+([^\s`]+)", code)]
        if "hf-resnet demo" not in code:  # the demo's --space is a folder it writes, not a search space
            named += [(name, spaces) for name in re.findall(r"--space[ =]+([^\s`]+)", code)]
        named += [(code.strip(), shipped | spaces)] if re.fullmatch(rf"\s*(?:{folders})/\w+\s*", code) else []
        for name, known in named:
            if name.isupper() or name.endswith((".yaml", ".yml")) or name == "...":
                continue  # a placeholder (RECIPE) or the user's own file
            if name not in known:
                unknown.append(f"{where}: {name}")
    assert unknown == []


def test_sub_commands_exist():
    from hf_resnet.cli import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    unknown = {f"{where}: hf-resnet {word}" for where, code in all_code()
               for word in re.findall(r"(?<![\w/.-])hf-resnet\s+([a-z][\w-]*)", code) if word not in action.choices}
    assert sorted(unknown) == []


def anchors(page: Path) -> set[str]:
    """The ids mkdocs gives the page's headings (toc's slugify of the heading's text)."""
    from markdown.extensions.toc import slugify

    text = re.sub(r"^\s*```.*?^\s*```\s*$", "", page.read_text(), flags=re.S | re.M)
    headings = re.findall(r"^#+\s+(.+?)\s*$", text, flags=re.M)
    return {slugify(re.sub(r"[`*]", "", heading), "-") for heading in headings}


@pytest.mark.parametrize("page", [README, BENCHMARKS], ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_outside_the_site_exist(page):
    """mkdocs checks the links between the site's pages; these two files are outside it."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#([^)]*))?\)", page.read_text())
    assert links
    broken = []
    for link, anchor in links:
        target = (page.parent / link).resolve()
        if "://" in link:
            continue
        if not target.exists() or (anchor and anchor not in anchors(target)):
            broken.append(f"{link}#{anchor}" if anchor else link)
    assert broken == []


def test_architecture_lists_every_module():
    package = REPO / "hf_resnet"
    text = (DOCS / "architecture.md").read_text()
    modules = [p.relative_to(REPO).as_posix() for p in package.rglob("*.py") if p.name != "__init__.py"]
    assert [m for m in sorted(modules) if m not in text] == [], "add a line per module to docs/architecture.md"


# -- d. the commands ------------------------------------------------------------------------------------------------

def test_every_command_has_a_rule():
    commands = all_commands()
    assert any(rule and rule[0] == RUN for _, _, rule in commands)
    assert [f"{where}: {command}" for where, command, rule in commands if rule is None] == []


SKIPPED = [(where, command, rule[1]) for where, command, rule in all_commands() if rule and rule[0] == SKIP]


@pytest.mark.parametrize("where, command, reason", SKIPPED, ids=[where for where, _, _ in SKIPPED])
def test_skipped_by_rule(where, command, reason):
    pytest.skip(f"not run, {reason}: {command}")


def to_run() -> list[tuple[str, str]]:
    seen, commands = set(), []
    for where, command, rule in all_commands():
        if rule and rule[0] == RUN and same_command(command) not in seen:
            seen.add(same_command(command))
            commands.append((where, command))
    return commands


@pytest.mark.slow
def test_offline_commands_run(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    (work / "tests").symlink_to(REPO / "tests", target_is_directory=True)
    dropped = ("HF_RESNET_CACHE", "HF_DATASETS_CACHE", "HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME")
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    env.update(HOME=str(work), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    failures, timings = [], []
    for where, command in to_run():
        start = time.perf_counter()
        result = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True,
                                timeout=600)
        timings.append(f"{time.perf_counter() - start:6.1f} s  {where}  {command}")
        if result.returncode != 0:
            failures.append(f"{where}: {command}\nexit {result.returncode}\n{(result.stdout + result.stderr)[-3000:]}")
    print("\n".join(timings))
    assert failures == [], "\n\n".join(failures) + "\n\n" + "\n".join(timings)
