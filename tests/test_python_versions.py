"""The device side must run on JetPack 4.6's Python 3.6: a static check that fails with file and line.

vermin reads every file under edge/, labels/ and systemd/ and reports each feature newer than 3.6
(postponed annotations, walrus, ``importlib.resources.files``, ``subprocess.run(text=)``...). The
backports the base install pulls on old Pythons (``dataclasses``, ``typing_extensions``) count as there.
CI's JetPack tiers then run the device tests on real 3.6, 3.8 and 3.10 interpreters.
"""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEVICE_CODE = ("edge", "labels", "systemd")
VERMIN = [sys.executable, "-c", "import sys; from vermin.main import main; sys.exit(main())", "--target=3.6-", "--no-tips", "--violations", "--eval-annotations",
          "--backport", "dataclasses", "--backport", "typing_extensions==4.0", "--no-make-paths-absolute"]


def test_device_code_needs_nothing_newer_than_python_3_6():
    pytest.importorskip("vermin", reason="pip install '.[test]' in the edge-classifier checkout for the Python 3.6 check")
    done = subprocess.run(VERMIN + list(DEVICE_CODE), cwd=str(REPO), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    assert done.returncode == 0, f"device code uses Python > 3.6 features:\n{done.stdout}"


def test_the_check_would_catch_a_3_7_feature(tmp_path):
    pytest.importorskip("vermin")
    (tmp_path / "late.py").write_text("from __future__ import annotations\nx = (y := 1)\n")
    done = subprocess.run(VERMIN + [str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=120)
    assert done.returncode != 0 and "late.py" in done.stdout
