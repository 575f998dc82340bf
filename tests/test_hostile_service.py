"""edge-service install against hostile input: it never replaces a file it did not write, never runs as
root, and never opens / or a system tree for writing. One line on stderr, exit 1 or 2, nothing changed."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from edge.service import main


def install(root: Path, model: Path, *more: str, user: str = "edge") -> int:
    return main(["install", "--model", str(model), "--user", user, "--root", str(root), "--camera", "0", *more])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edge-service: ") and "Traceback" not in err, err
    return err


def tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name,foreign", [
    ("grub", "etc/default/grub"),
    ("ssh", "etc/systemd/system/ssh.service"),
    ("ssh", "etc/default/ssh"),
])
def test_install_never_replaces_a_file_it_did_not_write(name, foreign, tmp_path, model_file, capsys):
    root = tmp_path / "root"
    (root / foreign).parent.mkdir(parents=True)
    (root / foreign).write_text("GRUB_TIMEOUT=5\n")
    before = tree(root)
    assert install(root, model_file, "--name", name) == 1
    assert "was not written by edge-service" in one_line_error(capsys)
    assert tree(root) == before
    assert main(["install", "--model", str(model_file), "--user", "edge", "--root", str(root), "--camera", "0",
                 "--name", name, "--dry-run"]) == 1  # a dry run says so too
    assert "was not written by edge-service" in one_line_error(capsys)


def test_install_never_replaces_a_link_or_a_folder(tmp_path, model_file, capsys):
    root = tmp_path / "root"
    (root / "etc/default").mkdir(parents=True)
    (tmp_path / "elsewhere").write_text("precious\n")
    os.symlink(str(tmp_path / "elsewhere"), str(root / "etc/default/edge-classify"))
    assert install(root, model_file) == 1
    assert "is not a file edge-service wrote" in one_line_error(capsys)
    assert (tmp_path / "elsewhere").read_text() == "precious\n"


def test_reinstalling_its_own_files_still_works(tmp_path, model_file, capsys):
    root = tmp_path / "root"
    assert install(root, model_file) == 0
    assert install(root, model_file, "--json") == 0
    assert "--json" in (root / "etc/default/edge-classify").read_text()


@pytest.mark.parametrize("user,message", [
    ("0", "root's number"), ("00", "root's number"), ("000000", "root's number"), ("root", "never runs as root"),
])
def test_user_never_means_root(user, message, tmp_path, model_file, capsys):
    assert install(tmp_path / "root", model_file, user=user) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "root").exists()


def test_user_by_number_is_rendered_as_given(tmp_path, model_file):
    assert install(tmp_path / "root", model_file, user="1000") == 0
    unit = (tmp_path / "root/etc/systemd/system/edge-classify.service").read_text()
    assert re.findall(r"^User=(.*)$", unit, re.MULTILINE) == ["1000"]


@pytest.mark.parametrize("output", ["/out.mp4", "/etc/x.mp4", "/etc/systemd/x.mp4", "/usr/local/x.mp4", "/var/x.mp4",
                                    "/boot/x.mp4", "/opt/x.mp4", "/home/x.mp4", "/run/x.mp4"])
def test_output_never_opens_a_system_folder(output, tmp_path, model_file, capsys):
    assert install(tmp_path / "root", model_file, "--output", output) == 2
    assert "a system folder" in one_line_error(capsys)
    assert not (tmp_path / "root").exists()


def test_output_through_a_link_into_etc_is_refused(tmp_path, model_file, capsys):
    os.symlink("/etc", str(tmp_path / "innocent"))
    assert install(tmp_path / "root", model_file, "--output", str(tmp_path / "innocent" / "x.mp4")) == 2
    assert "/etc, a system folder" in one_line_error(capsys)


def test_output_may_not_be_the_model_or_the_video(tmp_path, model_file, capsys):
    video = tmp_path / "clip.avi"
    video.write_bytes(b"avi")
    assert install(tmp_path / "root", model_file, "--output", str(model_file)) == 2
    assert "one of the service's inputs" in one_line_error(capsys)
    assert main(["install", "--model", str(model_file), "--user", "edge", "--root", str(tmp_path / "root"),
                 "--source", str(video), "--output", str(video)]) == 2
    assert "one of the service's inputs" in one_line_error(capsys)


def test_an_output_in_its_own_folder_is_writable_there(tmp_path, model_file):
    assert install(tmp_path / "root", model_file, "--output", "/srv/videos/out.mp4") == 0
    unit = (tmp_path / "root/etc/systemd/system/edge-classify.service").read_text()
    assert re.findall(r"^ReadWritePaths=(.*)$", unit, re.MULTILINE) == ["/srv/videos"]


def test_an_output_folder_with_spaces_works(tmp_path, model_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my clips").mkdir()
    assert install(tmp_path / "root", model_file, "--output", "my clips/out.mp4", "--json") == 0
    unit = (tmp_path / "root/etc/systemd/system/edge-classify.service").read_text()
    env = (tmp_path / "root/etc/default/edge-classify").read_text()
    folder = tmp_path / "my clips"
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", unit, re.MULTILINE)
    assert exec_start.endswith(f'$EDGE_ARGS --output "{folder / "out.mp4"}"')
    assert re.findall(r"^ReadWritePaths=(.*)$", unit, re.MULTILINE) == [f'"{folder}"']
    assert re.findall(r"^EDGE_ARGS=(.*)$", env, re.MULTILINE) == ["--json"]


@pytest.mark.parametrize("flags,message", [(["--threshold", "2"], "--threshold is a probability"),
                                           (["--stats-interval", "-1"], "--stats-interval must be 0"),
                                           (["--width", "-640"], "--width must be a positive number")])
def test_values_edge_classify_would_refuse_are_refused_at_install(flags, message, tmp_path, model_file, capsys):
    assert install(tmp_path / "root", model_file, *flags) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("flags, message", [(["--output", "/srv/a\nExecStartPre=/bin/sh -c id\n.mp4"], "control"),
                                            (["--labels", "/srv/l\n[Service]\nUser=root"], "--labels")])
def test_a_newline_in_a_path_cannot_add_a_directive(flags, message, tmp_path, model_file, capsys):
    assert install(tmp_path / "root", model_file, *flags) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "root").exists()


def test_an_env_value_that_is_not_one_line_is_refused_without_echoing_it(tmp_path, model_file, monkeypatch, capsys):
    monkeypatch.setenv("EDGE_MQTT_USERNAME", "edge")
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", "s3cret\nEDGE_ARGS=--evil")
    assert install(tmp_path / "root", model_file, "--mqtt", "mqtt://127.0.0.1/edge") == 2
    assert "s3cret" not in one_line_error(capsys)
