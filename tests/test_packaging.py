"""Installing the clone is quiet: `scripts/install` prints nothing of setuptools' own.

pip builds the editable install in an isolated environment with the setuptools that
pyproject.toml asks for, exactly as `scripts/install` does, into a throwaway prefix.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_editable_install_prints_no_build_backend_warning(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
            "--no-deps",
            # Without it pip would first uninstall the clone's own install from this venv.
            "--ignore-installed",
            "--prefix",
            str(tmp_path),
            "--editable",
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # pip's own notes about its configured indexes are not the build's.
    build = [line for line in result.stderr.splitlines() if not line.startswith("WARNING: ")]
    assert not any("BuildBackendWarning" in line for line in build), result.stderr
    assert not any("careful with folders" in line for line in build), result.stderr
    # The editable install still serves the package from the clone.
    pth = list(tmp_path.glob("lib/python*/site-packages/__editable__.sse_bridge-*.pth"))
    assert len(pth) == 1
    assert Path(pth[0].read_text().strip()).resolve() == ROOT
