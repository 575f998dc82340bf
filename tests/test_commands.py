"""What the four commands share: --version, argparse's exits, one-line user errors, visible bugs, the display window."""

import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from cli_checks import one_line, usage_error

import edge
import edge.cli
import edge.pipeline
import edge.service.cli
import edge.sinks.overlay
import export.cli

REPO = Path(__file__).resolve().parents[1]
MAINS = {"edge-classify": edge.cli.main, "edge-service": edge.service.cli.main, "edge-export": export.cli.export_main,
         "edge-train": export.cli.train_main}


@pytest.mark.parametrize("name", sorted(MAINS))
def test_version_and_usage_exits_are_the_same_in_all_four(name, capsys):
    assert MAINS[name](["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"{name} {edge.__version__}"
    assert MAINS[name](["--no-such-flag"]) == 2
    assert "error:" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ usage errors
# One table for "a usage error is one line, exit 2" in all four commands. MODEL, IMAGE and ROOT stand for a
# real ONNX artifact, a real photo and a folder under tmp_path (edge-service's --root). Each row runs in
# tmp_path as its working folder, and nothing may appear there: no root, no output, no probe.
MODEL, IMAGE, ROOT = "{model}", "{image}", "{root}"


def classify(*argv: str):
    return "edge-classify", ["--model", MODEL, *argv]


def image(*flags: str):
    return classify("--image", IMAGE, *flags)


def install(*flags: str):
    return "edge-service", ["install", "--model", MODEL, "--user", "edge", "--root", ROOT, *flags]


def row(command, *needles: str, skip: str = ""):
    (prog, argv), marks = command, [pytest.mark.skip(reason=skip)] if skip else []
    return pytest.param(prog, argv, needles, id=f"{prog} {needles[0]}", marks=marks)


def argparse_row(command, message: str):
    """argparse's own errors: one line that names the argument and points at --help, not the whole usage."""
    return row(command, f"error: argument {message}", f"; see {command[0]} --help")


GSTREAMER = cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER)
GUI = edge.sinks.overlay.opencv_has_gui()

USAGE_ERRORS = [
    # edge-classify: values and options, for images and for streams
    argparse_row(image("--max-pixels", "0"), "--max-pixels: must be at least 1"),
    argparse_row(image("--topk", "many"), "--topk: invalid"),
    row(image("--threshold", "2"), "--threshold is a probability"),
    row(image("--smooth", "-1"), "--smooth must be at least 1"),
    row(image("--stats-interval", "-1"), "--stats-interval must be 0"),
    row(image("--width", "-640"), "--width must be a positive number"),
    row(image("--fps", "nan"), "--fps must be a positive number"),
    row(classify("--camera", "63"), "cannot open camera /dev/video63: is it plugged in"),
    row(classify("--source", "/dev/video63"), "cannot open camera /dev/video63"),
    row(classify("--source", "csi://0"), "needs GStreamer", skip="this OpenCV has GStreamer" if GSTREAMER else ""),
    row(classify("--source", "missing.mp4"), "missing.mp4: no such video file"),
    row(classify("--source", "ftp://host/x"), "unknown source scheme 'ftp'"),
    row(classify("--camera", "0", "--loop"), "--loop replays a video file"),
    row(classify("--camera", "0", "--smooth", "0"), "--smooth must be at least 1"),
    row(classify("--camera", "0", "--threshold", "1.5"), "--threshold is a probability"),
    row(classify("--camera", "0", "--display"), "no GUI support", skip="this OpenCV can open windows" if GUI else ""),
    # edge-service install: what a service cannot do, and values edge-classify would refuse at every start
    row(install(), "say what to classify"),
    row(install("--camera", "0", "--image", "x.jpg"), "--image: a service classifies"),
    row(install("--camera", "0", "--display"), "--display: a service has no screen"),
    row(install("--camera", "0", "--thresold", "0.5"), "unrecognized arguments: --thresold"),
    row(install("--camera", "0", "--topk", "many"), "invalid int value: 'many'"),
    row(install("--camera", "0", "--labels", "/no/such/labels.txt"), "--labels /no/such/labels.txt: no such file"),
    row(install("--camera", "0", "--threshold", "0.5 0.6"), "cannot hold spaces"),
    row(install("--source", "/no/such/video.mp4"), "no such video file"),
    row(install("--camera", "0", "--user", "root"), "never runs as root"),
    row(install("--camera", "0", "--name", "a/b"), "--name 'a/b'"),
    row(install("--camera", "-1"), "not -1"),
    row(install("--camera", "0", "--threshold", "2"), "--threshold is a probability"),
    row(install("--camera", "0", "--stats-interval", "-1"), "--stats-interval must be 0"),
    row(install("--camera", "0", "--width", "-640"), "--width must be a positive number"),
    row(install("--camera", "0", "--output", "/srv/a\nExecStartPre=/bin/sh -c id\n.mp4"), "control"),
    row(install("--camera", "0", "--labels", "/srv/l\n[Service]\nUser=root"), "--labels"),
    # edge-export and edge-train
    argparse_row(("edge-export", ["--out", "x.onnx", "--opset", "0"]), "--opset: must be at least 1, not 0"),
    argparse_row(("edge-export", ["--out", "x.onnx", "--tolerance", "2"]), "--tolerance: must be a probability"),
    argparse_row(("edge-train", ["--batch-size", "-3"]), "--batch-size: must be at least 1"),
    argparse_row(("edge-train", ["--epochs", "0"]), "--epochs: must be at least 1, not 0"),
]


@pytest.mark.parametrize("prog, argv, needles", USAGE_ERRORS)
def test_a_usage_error_is_one_line_and_exit_2(prog, argv, needles, photo_onnx, photo_dir, tmp_path, monkeypatch,
                                              capsys):
    monkeypatch.chdir(tmp_path)
    values = {MODEL: str(photo_onnx), IMAGE: str(photo_dir / "chelsea.jpg"), ROOT: str(tmp_path / "root")}
    code = MAINS[prog]([values.get(arg, arg) for arg in argv])
    captured = capsys.readouterr()
    usage_error(code, captured.err, prog, *needles)
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_console_scripts_print_the_version():
    for name in MAINS:
        script = Path(sys.executable).parent / name
        result = subprocess.run([str(script), "--version"], stdout=subprocess.PIPE, universal_newlines=True,
                                timeout=120)
        assert (result.returncode, result.stdout.strip()) == (0, f"{name} {edge.__version__}")


def test_a_bug_names_itself_and_shows_its_traceback_with_v(monkeypatch, tmp_path, capsys):
    """A user error is one line, exit 2; anything else is not dressed up as one: exit 1, and -v re-raises it."""
    import edge.model.classify

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(edge.model.classify.Classifier, "open", broken)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    argv = ["--model", str(model), "--image", str(tmp_path)]
    assert edge.cli.main(argv) == 1
    err = capsys.readouterr().err
    one_line(err, "edge-classify", "unexpected ZeroDivisionError", "-v")
    with pytest.raises(ZeroDivisionError):
        edge.cli.main(argv + ["-v"])


def test_the_window_opens_at_the_frame_size_or_fullscreen(monkeypatch):
    calls = []
    for name in ("namedWindow", "resizeWindow", "setWindowProperty"):
        monkeypatch.setattr(edge.sinks.overlay.cv2, name, lambda *args, _name=name: calls.append((_name,) + args))
    edge.sinks.overlay.open_window(1280, 720, fullscreen=False)
    assert ("resizeWindow", edge.sinks.overlay.WINDOW, 1280, 720) in calls
    calls.clear()
    edge.sinks.overlay.open_window(1280, 720, fullscreen=True)
    assert any(c[0] == "setWindowProperty" and c[3] == edge.sinks.overlay.cv2.WINDOW_FULLSCREEN for c in calls)


def test_fullscreen_needs_display(capsys, photo_onnx, tmp_path):
    video = tmp_path / "none.avi"
    video.write_bytes(b"")
    code = edge.cli.main(["--model", str(photo_onnx), "--source", str(video), "--fullscreen"])
    usage_error(code, capsys.readouterr().err, "edge-classify", "--fullscreen goes with --display")


def test_without_opencv_the_command_says_how_to_get_it(tmp_path):
    """Nothing edge-classify imports at start-up needs cv2 (the flags, the settings, their checks), so a device
    without OpenCV gets the install hint in one line, not an ImportError traceback."""
    code = ("import sys; sys.modules['cv2'] = None\n"
            "from edge.cli import main\n"
            f"sys.exit(main(['--model', {str(tmp_path / 'm.onnx')!r}, '--source', 'clip.avi']))")
    done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, cwd=str(REPO), timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "OpenCV (cv2) is not importable" in done.stderr
