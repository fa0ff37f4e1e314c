"""``pip install ./cli`` works on its own: the wheel carries diskimage, the formats it shares."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_shared_formats_and_the_command(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT / "cli")],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("baas_cli-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "baas = baas_cli.entry:main" in archive.read(entry_points).decode()
    for module in ("datamap", "sparse", "seekable", "verify", "holes"):
        assert f"diskimage/{module}.py" in names
    assert "baas_cli/push.py" in names and "baas_cli/pull.py" in names
