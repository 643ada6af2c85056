"""The repository's URL, kept in one place: pyproject.toml's [project.urls] Repository.

The README's Colab badges, the notebooks' install cells and the model card's link all name it. A fork
changes it once:

    python tools/repo_url.py https://github.com/you/sdft-kit      # or: make repo-url URL=...

which rewrites pyproject.toml and every file that names the old URL (the ones listed in FILES), and
prints what it changed. `python tools/repo_url.py --check` fails if any of them names another URL
(tests/test_repo_url.py runs it).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
FILES = ["README.md", "sdft_kit/export.py", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("notebooks/*.ipynb"))]
URL_LINE = re.compile(r'^Repository = "(https://github\.com/[\w.-]+/[\w.-]+)"$', re.M)
GITHUB = re.compile(r"github\.com/([\w.-]+/[\w.-]+?)(?=[/\"'\s)]|\.git|$)")


def current() -> str:
    found = URL_LINE.search(PYPROJECT.read_text())
    if not found:
        sys.exit(f"error: {PYPROJECT}: no 'Repository = \"https://github.com/<owner>/<name>\"' line under "
                 "[project.urls]")
    return found.group(1)


def named(url: str) -> str:
    return url.removeprefix("https://github.com/")


def mismatches(url: str) -> list[str]:
    """'file:line: names owner/name' for every GitHub repository a listed file names other than `url`'s
    (links to other projects are told apart by not ending in 'sdft-kit')."""
    wanted, out = named(url), []
    for name in FILES:
        for number, line in enumerate((ROOT / name).read_text().splitlines(), start=1):
            for repo in GITHUB.findall(line):
                if repo.lower().endswith("/sdft-kit") and repo != wanted:
                    out.append(f"{name}:{number}: names {repo}, not {wanted}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", help="the new repository URL, https://github.com/<owner>/<name>")
    parser.add_argument("--check", action="store_true", help="only check that every file names pyproject's URL")
    args = parser.parse_args()
    old = current()
    if args.check or not args.url:
        problems = mismatches(old)
        print("\n".join(problems) or f"every file names {old}")
        sys.exit(1 if problems else 0)
    new = args.url.rstrip("/").removesuffix(".git")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", new):
        sys.exit(f"error: {new!r} is not https://github.com/<owner>/<name>")
    for name in ["pyproject.toml", *FILES]:
        path = ROOT / name
        text = path.read_text()
        if named(old) in text:
            path.write_text(text.replace(named(old), named(new)))
            print(f"{name}: {text.count(named(old))} x {named(old)} -> {named(new)}")


if __name__ == "__main__":
    main()
