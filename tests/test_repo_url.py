"""The repository URL lives in one place (pyproject.toml); every file that names it agrees, and a fork's
one command rewrites them all."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_file_names_the_pyproject_url_and_a_fork_rewrites_them_in_one_command(tmp_path):
    check = subprocess.run([sys.executable, "tools/repo_url.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    copy = tmp_path / "repo"
    for name in ("pyproject.toml", "README.md", "tools", "notebooks", "sdft_kit/export.py"):
        source, target = ROOT / name, copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    moved = subprocess.run([sys.executable, "tools/repo_url.py", "https://github.com/someone/sdft-kit"], cwd=copy,
                           capture_output=True, text=True)
    assert moved.returncode == 0, moved.stderr
    assert "README.md: " in moved.stdout and "-> someone/sdft-kit" in moved.stdout
    readme = (copy / "README.md").read_text()
    assert "colab.research.google.com/github/someone/sdft-kit/blob/main/notebooks/" in readme
    assert "sdft-kit/sdft-kit" not in readme and "sdft-kit/sdft-kit" not in (copy / "pyproject.toml").read_text()
    assert all("git+https://github.com/someone/sdft-kit" in p.read_text() for p in (copy / "notebooks").glob("*.ipynb"))
    again = subprocess.run([sys.executable, "tools/repo_url.py", "--check"], cwd=copy, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout
    (copy / "README.md").write_text(readme + "\nhttps://github.com/other/sdft-kit\n")  # a stray old link: found
    stray = subprocess.run([sys.executable, "tools/repo_url.py", "--check"], cwd=copy, capture_output=True, text=True)
    assert stray.returncode == 1 and "README.md:" in stray.stdout and "names other/sdft-kit" in stray.stdout
