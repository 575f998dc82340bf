"""edge-service install against hostile input: it never replaces a file it did not write, never takes a name
another package holds, never deletes a folder it did not create, never runs as root, and never opens / or a
system tree for writing. One line on stderr, exit 1 or 2, nothing changed."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from cli_checks import error_line

import edge.service.cli
from edge.service.cli import main


def install(root: Path, model: Path, *more: str, user: str = "edge") -> int:
    return main(["install", "--model", str(model), "--user", user, "--root", str(root), "--camera", "0", *more])


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
    assert "was not written by edge-service" in error_line(capsys, "edge-service")
    assert tree(root) == before
    assert main(["install", "--model", str(model_file), "--user", "edge", "--root", str(root), "--camera", "0",
                 "--name", name, "--dry-run"]) == 1  # a dry run says so too
    assert "was not written by edge-service" in error_line(capsys, "edge-service")


def test_install_never_replaces_a_link_or_a_folder(tmp_path, model_file, capsys):
    root = tmp_path / "root"
    (root / "etc/default").mkdir(parents=True)
    (tmp_path / "elsewhere").write_text("precious\n")
    os.symlink(str(tmp_path / "elsewhere"), str(root / "etc/default/edge-classify"))
    assert install(root, model_file) == 1
    assert "was not written by edge-service" in error_line(capsys, "edge-service")
    assert (tmp_path / "elsewhere").read_text() == "precious\n"


def test_reinstalling_its_own_files_still_works(tmp_path, model_file, capsys):
    root = tmp_path / "root"
    assert install(root, model_file) == 0
    (root / "var/lib/edge-classify/mqtt").mkdir()  # what the service wrote meanwhile
    assert install(root, model_file, "--json") == 0
    assert "--json" in (root / "etc/default/edge-classify").read_text()
    assert (root / "var/lib/edge-classify/mqtt").is_dir()


@pytest.mark.parametrize("held", [
    "lib/systemd/system/postgresql.service", "usr/lib/systemd/system/postgresql.service",
    "usr/local/lib/systemd/system/postgresql.service", "run/systemd/system/postgresql.service",
    "var/lib/postgresql/", "var/cache/postgresql/", "etc/postgresql/", "var/lib/postgresql (a link)"])
def test_install_never_takes_a_name_another_package_holds(held, tmp_path, model_file, capsys):
    root = tmp_path / "root"
    path = root / held.split(" ")[0]
    path.parent.mkdir(parents=True)
    if held.endswith("/"):
        path.mkdir()
        (path / "PG_VERSION").write_text("16\n")
    elif held.endswith("(a link)"):
        os.symlink(str(tmp_path), str(path))
    else:
        path.write_text("[Service]\nExecStart=/usr/lib/postgresql/16/bin/postgres\n")
    before = tree(root)
    for dry_run in ([], ["--dry-run"]):
        assert install(root, model_file, "--name", "postgresql", *dry_run) == 1
        assert re.search(r"postgresql\S* exists(: the name postgresql belongs to another package| and edge-service "
                         r"did not create it); choose another --name", error_line(capsys, "edge-service"))
    assert tree(root) == before and not (root / "etc/systemd/system/postgresql.service").exists()


def test_purge_deletes_only_the_folders_install_created(tmp_path, model_file, capsys):
    root = tmp_path / "root"
    assert install(root, model_file, "--name", "cam") == 0
    (root / "var/lib/cam/mqtt").mkdir()
    (root / "var/lib/cam/mqtt/spool.db").write_bytes(b"queued")
    # An older edge-service installed `--name postgresql` over the package's own folders: the unit is ours, the
    # folders are not. Reinstalling still works; purging removes our files and keeps the folders.
    assert install(tmp_path / "elsewhere", model_file, "--name", "postgresql") == 0
    for ours in ("etc/systemd/system/postgresql.service", "etc/default/postgresql"):
        (root / ours).write_bytes((tmp_path / "elsewhere" / ours).read_bytes())
    (root / "var/lib/postgresql").mkdir()
    (root / "var/lib/postgresql/PG_VERSION").write_text("16\n")
    (root / "var/cache/postgresql").mkdir()
    os.symlink(str(root / "var/cache/cam/.edge-service"), str(root / "var/cache/postgresql/.edge-service"))
    assert install(root, model_file, "--name", "postgresql", "--json") == 0
    capsys.readouterr()
    assert main(["uninstall", "--purge", "--name", "postgresql", "--root", str(root)]) == 0
    assert "kept " + str(root / "var/lib/postgresql") in capsys.readouterr().out
    assert (root / "var/lib/postgresql/PG_VERSION").read_text() == "16\n" and (root / "var/cache/postgresql").is_dir()
    assert not (root / "etc/systemd/system/postgresql.service").exists()
    assert main(["uninstall", "--purge", "--name", "cam", "--root", str(root)]) == 0
    assert not (root / "var/lib/cam").exists() and not (root / "var/cache/cam").exists()


def test_secrets_are_never_readable_by_others_not_even_while_written(tmp_path, model_file, monkeypatch):
    root = tmp_path / "root"
    folder = root / "etc/default"
    modes = []

    def watching(real):
        def spy(*args, **kwargs):  # every file in /etc/default, whenever install changes a mode or renames
            modes.extend((p.name, stat.S_IMODE(p.lstat().st_mode)) for p in folder.glob("*") if not p.is_symlink())
            return real(*args, **kwargs)
        return spy

    for name in ("chmod", "fchmod", "replace", "rename"):
        monkeypatch.setattr(os, name, watching(getattr(os, name)))
    monkeypatch.setenv("EDGE_MQTT_USERNAME", "edge")
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", "s3cret")
    umask = os.umask(0o022)
    try:
        assert install(root, model_file, "--mqtt", "mqtt://127.0.0.1/edge") == 0
    finally:
        os.umask(umask)
    assert modes and all(mode & 0o077 == 0 for _, mode in modes), modes
    assert "EDGE_MQTT_PASSWORD=s3cret" in (folder / "edge-classify").read_text()


def test_links_planted_at_temporary_names_are_not_followed(tmp_path, model_file):
    root = tmp_path / "root"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    planted = [root / "etc/default/.edge-classify.edge-service",
               root / "etc/systemd/system/.edge-classify.service.edge-service"]
    for link in planted:
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(str(victim), str(link))
    assert install(root, model_file) == 0
    assert victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert all(link.is_symlink() for link in planted)
    assert stat.S_IMODE((root / "etc/default/edge-classify").stat().st_mode) == 0o600


def test_a_dry_run_checks_what_install_checks(tmp_path, model_file, capsys, monkeypatch):
    assert str(model_file).startswith(edge.service.cli.PRIVATE_TMP_DIRS)  # pytest's tmp_path is under /tmp
    here = ["install", "--model", str(model_file), "--camera", "0", "--dry-run"]
    assert main(here + ["--user", "nobody"]) == 2
    assert "is under /tmp, which the service does not share" in error_line(capsys, "edge-service")
    monkeypatch.setattr(edge.service.cli, "PRIVATE_TMP_DIRS", ())
    for more, message in ((["--user", "no-such-user-here"], "no user 'no-such-user-here' here"),
                          (["--user", "nobody", "--output", "/no/such/folder/x.mp4"], "no folder /no/such/folder")):
        assert main(here + more) == 2
        assert message in error_line(capsys, "edge-service")
    assert main(here + ["--user", "no-such-user-here", "--root", str(tmp_path / "root")]) == 0  # another machine


@pytest.mark.parametrize("name", ["a/b", "../etc", "..", ".hidden", "-rf", "cam@0", "cam\n0", "cam\x1b[2J", "cam 0",
                                  "", "a" * 65])
def test_a_hostile_name_is_refused_by_every_command(name, tmp_path, model_file, capsys):
    root = tmp_path / "root"
    for argv in (["install", "--model", str(model_file), "--user", "edge", "--camera", "0", "--root", str(root)],
                 ["uninstall", "--purge", "--root", str(root)], ["status"]):
        assert main(argv + [f"--name={name}"]) == 2
        assert "--name" in error_line(capsys, "edge-service")
    assert not root.exists()


@pytest.mark.parametrize("what", ["model", "video", "stream", "escape"])
def test_a_control_character_in_a_path_or_source_is_refused(what, tmp_path, capsys):
    odd = tmp_path / ("m\x1b[2J.onnx" if what == "escape" else "m\nEDGE_ARGS=--evil.onnx")
    odd.write_bytes(b"onnx")
    model, source = (odd, ["--camera", "0"]) if what in ("model", "escape") else (tmp_path / "m.onnx", [])
    model.write_bytes(b"onnx")
    if what == "video":
        source = ["--source", str(odd)]
    elif what == "stream":
        source = ["--source", "rtsp://cam/x\nEDGE_ARGS=--evil"]
    assert main(["install", "--model", str(model), "--user", "edge", "--root", str(tmp_path / "root"), *source]) == 2
    assert "control character" in error_line(capsys, "edge-service")
    assert not (tmp_path / "root").exists()


def test_a_missing_path_with_a_newline_is_shown_escaped(tmp_path, model_file, capsys):
    assert install(tmp_path / "root", tmp_path / "no\nsuch.onnx") == 2
    assert f"model file not found: {tmp_path}/no\\nsuch.onnx" in error_line(capsys, "edge-service")


@pytest.mark.parametrize("user,message", [
    ("0", "root's number"), ("00", "root's number"), ("000000", "root's number"), ("root", "never runs as root"),
])
def test_user_never_means_root(user, message, tmp_path, model_file, capsys):
    assert install(tmp_path / "root", model_file, user=user) == 2
    assert message in error_line(capsys, "edge-service")
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("user", ["ed ge", "edge\nUser=root", "../edge", "ed:ge", "edge\x1b[2J", "e" * 33])
def test_a_hostile_user_name_is_refused(user, tmp_path, model_file, capsys):
    assert install(tmp_path / "root", model_file, user=user) == 2
    assert "is not a user name" in error_line(capsys, "edge-service")
    assert not (tmp_path / "root").exists()


def test_user_by_number_is_rendered_as_given(tmp_path, model_file):
    assert install(tmp_path / "root", model_file, user="1000") == 0
    unit = (tmp_path / "root/etc/systemd/system/edge-classify.service").read_text()
    assert re.findall(r"^User=(.*)$", unit, re.MULTILINE) == ["1000"]


@pytest.mark.parametrize("output", ["/out.mp4", "/etc/x.mp4", "/etc/systemd/x.mp4", "/usr/local/x.mp4", "/var/x.mp4",
                                    "/boot/x.mp4", "/opt/x.mp4", "/home/x.mp4", "/run/x.mp4"])
def test_output_never_opens_a_system_folder(output, tmp_path, model_file, capsys):
    assert install(tmp_path / "root", model_file, "--output", output) == 2
    assert "a system folder" in error_line(capsys, "edge-service")
    assert not (tmp_path / "root").exists()


def test_output_through_a_link_into_etc_is_refused(tmp_path, model_file, capsys):
    os.symlink("/etc", str(tmp_path / "innocent"))
    assert install(tmp_path / "root", model_file, "--output", str(tmp_path / "innocent" / "x.mp4")) == 2
    assert "/etc, a system folder" in error_line(capsys, "edge-service")


def test_output_may_not_be_the_model_or_the_video(tmp_path, model_file, capsys):
    video = tmp_path / "clip.avi"
    video.write_bytes(b"avi")
    assert install(tmp_path / "root", model_file, "--output", str(model_file)) == 2
    assert "one of the service's inputs" in error_line(capsys, "edge-service")
    assert main(["install", "--model", str(model_file), "--user", "edge", "--root", str(tmp_path / "root"),
                 "--source", str(video), "--output", str(video)]) == 2
    assert "one of the service's inputs" in error_line(capsys, "edge-service")


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


def test_an_env_value_that_is_not_one_line_is_refused_without_echoing_it(tmp_path, model_file, monkeypatch, capsys):
    monkeypatch.setenv("EDGE_MQTT_USERNAME", "edge")
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", "s3cret\nEDGE_ARGS=--evil")
    assert install(tmp_path / "root", model_file, "--mqtt", "mqtt://127.0.0.1/edge") == 2
    assert "s3cret" not in error_line(capsys, "edge-service")
