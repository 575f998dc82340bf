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


PYTHON_36 = Path.home() / ".pyenv" / "versions" / "3.6.15" / "bin" / "python"
HOST_COMMANDS = ("export_main", "train_main")


@pytest.mark.parametrize("entry", HOST_COMMANDS)
def test_edge_export_and_edge_train_on_python_3_6_say_what_they_need_in_one_line(entry):
    """A JetPack 4.6 install gets the console scripts too: on a real 3.6, their module imports and says in one line
    (exit 2) that the command needs the host install, instead of ``SyntaxError: future feature annotations``."""
    if not PYTHON_36.is_file():
        pytest.skip(f"no Python 3.6 at {PYTHON_36} (pyenv install 3.6.15)")
    code = f"import sys; from export.console import {entry}; sys.exit({entry}(['--version']))"
    done = subprocess.run([str(PYTHON_36), "-c", code], cwd=str(REPO), env={"PYTHONPATH": str(REPO)},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "Python 3.9+ with torch" in lines[0] and "pip install '.[export]'" in lines[0] and "3.6" in lines[0]


def test_the_console_scripts_point_at_the_module_any_python_imports():
    import configparser

    config = configparser.ConfigParser()
    config.read(str(REPO / "setup.cfg"))
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    scripts = dict(line.split(" = ") for line in lines if not line.startswith("#"))
    assert scripts["edge-export"] == "export.console:export_main"
    assert scripts["edge-train"] == "export.console:train_main"


def test_every_package_of_the_checkout_is_installed():
    """setup.cfg lists its packages by name: a new folder of modules left out installs without it (an editable
    install here would not notice; a wheel on a Jetson would fail to import)."""
    import configparser

    config = configparser.ConfigParser()
    config.read(str(REPO / "setup.cfg"))
    listed = {name.strip() for name in config["options"]["packages"].split(",")}
    found = {".".join(init.parent.relative_to(REPO).parts) for top in ("edge", "export")
             for init in (REPO / top).rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)


def test_without_torch_the_host_commands_name_the_extra(monkeypatch, capsys):
    import export.console

    monkeypatch.setitem(sys.modules, "torch", None)  # what an install without the export extra sees
    for entry in HOST_COMMANDS:
        assert getattr(export.console, entry)([]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "torch is not installed" in lines[0] and "pip install '.[export]'" in lines[0]
