"""What the four commands share: --version, argparse's exits, one-line user errors, visible bugs, the display window."""

import subprocess
import sys
from pathlib import Path

import pytest

import edge
import edge.cli
import edge.loop
import edge.service
import export.cli

REPO = Path(__file__).resolve().parents[1]
MAINS = {"edge-classify": edge.cli.main, "edge-service": edge.service.main, "edge-export": export.cli.export_main,
         "edge-train": export.cli.train_main}


@pytest.mark.parametrize("name", sorted(MAINS))
def test_version_and_usage_exits_are_the_same_in_all_four(name, capsys):
    assert MAINS[name](["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"{name} {edge.__version__}"
    assert MAINS[name](["--no-such-flag"]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.slow
def test_console_scripts_print_the_version():
    for name in MAINS:
        script = Path(sys.executable).parent / name
        result = subprocess.run([str(script), "--version"], stdout=subprocess.PIPE, universal_newlines=True,
                                timeout=120)
        assert (result.returncode, result.stdout.strip()) == (0, f"{name} {edge.__version__}")


def test_a_bug_names_itself_and_shows_its_traceback_with_v(monkeypatch, tmp_path, capsys):
    """A user error is one line, exit 2; anything else is not dressed up as one: exit 1, and -v re-raises it."""
    import edge.classify

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(edge.classify.Classifier, "open", broken)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    argv = ["--model", str(model), "--image", str(tmp_path)]
    assert edge.cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected ZeroDivisionError" in err and "-v" in err
    with pytest.raises(ZeroDivisionError):
        edge.cli.main(argv + ["-v"])


def test_the_window_opens_at_the_frame_size_or_fullscreen(monkeypatch):
    calls = []
    for name in ("namedWindow", "resizeWindow", "setWindowProperty"):
        monkeypatch.setattr(edge.loop.cv2, name, lambda *args, _name=name: calls.append((_name,) + args))
    edge.loop.open_window(1280, 720, fullscreen=False)
    assert ("resizeWindow", edge.loop.WINDOW, 1280, 720) in calls
    calls.clear()
    edge.loop.open_window(1280, 720, fullscreen=True)
    assert any(c[0] == "setWindowProperty" and c[3] == edge.loop.cv2.WINDOW_FULLSCREEN for c in calls)


def test_fullscreen_needs_display(capsys, photo_onnx, tmp_path):
    video = tmp_path / "none.avi"
    video.write_bytes(b"")
    assert edge.cli.main(["--model", str(photo_onnx), "--source", str(video), "--fullscreen"]) == 2
    assert "--fullscreen goes with --display" in capsys.readouterr().err
