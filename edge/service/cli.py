"""``edge-service``: run edge-classify at boot as a hardened systemd service, remove it, see how it does.

    sudo edge-service install --model /opt/models/mobilenet_v2_fp16.onnx --source csi://0 --json
    edge-service status                          # systemctl status + the last STATUS= line of the loop
    journalctl -u edge-classify -f               # its logs
    sudo edge-service deploy new_model.onnx      # a new model without a restart; rolls back by itself (deploy.py)
    sudo edge-service uninstall

``install`` renders ``systemd/edge-classify.service`` to ``/etc/systemd/system/NAME.service`` and
``systemd/edge-classify.env`` to ``/etc/default/NAME`` (model, source and extra flags: edit and restart),
then runs ``systemctl daemon-reload``, ``enable`` and ``restart --no-block``. ``--root DIR`` writes under
DIR and runs no systemctl (packaging, tests); ``--dry-run`` checks what install checks, prints the files and
touches nothing.

Decisions worth knowing:
- The service owns only what install created. A NAME that a unit in any folder systemd reads, an environment
  file, /etc/NAME or a state or cache folder already holds is refused, unless edge-service made it: its files start
  with ``MARKER``, and the folders it creates (/var/lib/NAME, /var/cache/NAME) hold a ``.edge-service``
  file. ``uninstall --purge`` deletes only folders that hold it.
- Each file is written under a new random name, 0600 from its first byte (then its own mode), never through
  a link, then renamed into place.
- The model stays where it is (the environment file names it). When the model, the venv or
  edge-classify lives under /home, the unit gets ``ProtectHome=read-only`` instead of ``yes``.
- A ``csi://`` source (or a pipeline with nvarguscamerasrc) adds ``Wants=nvargus-daemon.service`` and
  ``PrivateTmp=no``: libargus talks to nvargus-daemon over /tmp/argus_socket.
- Flags after the install options go to ``EDGE_ARGS``, which systemd splits at spaces, so their
  values may not contain spaces; ``--labels`` and ``--output`` are made absolute, and one whose path
  holds a space is written, quoted, at the end of ``ExecStart=`` instead.
"""


import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

from edge import __version__, contract
from edge.errors import (EXIT_FAILED, EXIT_OK, EXIT_USAGE, EdgeError, add_version, exit_code_of, one_line_usage_errors,
                         run_guarded)
from edge.resources import package_text
from edge.service.deploy import add_deploy_parsers

DEFAULT_NAME = "edge-classify"
UNIT_TEMPLATE, ENV_TEMPLATE = "edge-classify.service", "edge-classify.env"
UNIT_DIR, ENV_DIR, STATE_DIR, CACHE_DIR = "etc/systemd/system", "etc/default", "var/lib", "var/cache"
# Every folder systemd reads system units from: a NAME.service in any of them is another package's service.
OTHER_UNIT_DIRS = ("run/systemd/system", "usr/local/lib/systemd/system", "lib/systemd/system", "usr/lib/systemd/system")
# The folders systemd makes for a unit's *Directory= settings (RuntimeDirectory= is made and removed at each run).
FOLDER_KEYS = {"StateDirectory": STATE_DIR, "CacheDirectory": CACHE_DIR, "LogsDirectory": "var/log",
               "ConfigurationDirectory": "etc"}
# A package's folders by its name that the unit does not make (/etc/postgresql): the name is taken.
PACKAGE_DIRS = ("etc",)
MARKER = "# Written by edge-service"  # install replaces and uninstall removes only files that start with it
FOLDER_MARKER = ".edge-service"  # a file install puts in each folder it creates: purge deletes only those
SYSTEM_ROOT = Path("/")  # where install writes without --root
SYSTEMD_RUNTIME = Path("/run/systemd/system")  # exists when systemd is the running init
HOME_DIRS = ("/home", "/root", "/run/user")
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp")
PATH_FLAGS = ("--labels", "--output", "--mqtt-ca")
NETWORK_ELEMENTS = ("rtspsrc", "souphttpsrc", "udpsrc", "tcpclientsrc", "srtsrc", "rtmpsrc")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
USER_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?")
# Folders an --output may not open for writing (ReadWritePaths= would undo ProtectSystem=strict there):
# these trees and everything in them, and these folders themselves (their subfolders are fine).
SYSTEM_TREES = ("/etc", "/usr", "/boot", "/efi", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
                "/sys", "/dev", "/run", "/snap", "/var/lib/dpkg", "/var/lib/apt", "/var/lib/systemd")
SYSTEM_FOLDERS = ("/", "/var", "/var/lib", "/var/cache", "/var/log", "/var/spool", "/var/tmp", "/opt", "/home",
                  "/srv", "/mnt", "/media", "/root", "/tmp")


class ServiceError(EdgeError, RuntimeError):
    """Something the user can fix; the message is one line, ``exit_code`` the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(printable(message))  # a path or name with a newline or an escape stays one safe line
        self.exit_code = code


def printable(text: str) -> str:
    """``text`` with control and bidi-format characters escaped (``\\n``, ``\\x1b``, ``\\u202e``)."""
    return "".join(ascii(c)[1:-1] if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)


@dataclass(frozen=True)
class ServiceConfig:
    """Everything a rendered unit and environment file depend on."""

    name: str
    user: str
    command: Tuple[str, ...]  # edge-classify, absolute: the script, or python -m edge.cli
    model: Path
    source: str  # EDGE_SOURCE: the source, or the absolute path of a --sources file
    args: Tuple[str, ...]  # more edge-classify flags, for EDGE_ARGS
    sources_file: bool = False  # EDGE_SOURCE names a file of sources (ExecStart= passes it as --sources)
    quoted_args: Tuple[str, ...] = ()  # path flags whose value has a space: quoted in ExecStart=
    protect_home: str = "yes"  # or "read-only"
    csi: bool = False
    network: bool = False
    writable: Optional[Path] = None  # ReadWritePaths= (the folder of an --output)
    mqtt_login: Tuple[Tuple[str, str], ...] = ()  # (EDGE_MQTT_USERNAME, ...), (EDGE_MQTT_PASSWORD, ...) for --mqtt,
    # and (EDGE_SERVE_TOKEN, ...) for --serve / --metrics-port: secrets for the environment file


# ---------------------------------------------------------------------------------------------- render

def render_unit(config: ServiceConfig) -> str:
    """The unit file for ``config``: the template with its placeholders filled and its options set."""
    text = template(UNIT_TEMPLATE).split("\n\n", 1)[1]  # without its how-to-fill-me-by-hand header
    for placeholder, value in (("@NAME@", config.name), ("@USER@", config.user),
                               ("@EDGE_CLASSIFY@", " ".join(exec_quote(w) for w in config.command))):
        text = text.replace(placeholder, value)
    text = set_key(text, "ProtectHome", config.protect_home)
    if config.csi:
        text = uncomment(text, "Wants=nvargus-daemon.service")
        text = set_key(text, "PrivateTmp", "no")
    if config.network:
        text = uncomment(text, "Wants=network-online.target")
    if config.sources_file:
        text = text.replace(" --source ${EDGE_SOURCE} ", " --sources ${EDGE_SOURCE} ", 1)
    if config.quoted_args:
        text = text.replace(" $EDGE_ARGS\n", " $EDGE_ARGS " + " ".join(exec_quote(w) for w in config.quoted_args)
                            + "\n", 1)
    if config.writable is not None:
        text = set_key(text, "ReadWritePaths", exec_quote(str(config.writable), variables=False))
    return (f"{MARKER} {__version__} from its template {UNIT_TEMPLATE}; re-run `edge-service install` to change it.\n"
            f"# The model, the source and the flags are in /etc/default/{config.name}: edit, then "
            f"`systemctl restart {config.name}`.\n\n{text}")


def render_environment(config: ServiceConfig) -> str:
    """The environment file: model, source and the extra flags, each a NAME=value line."""
    text = template(ENV_TEMPLATE)
    text = set_key(text, "EDGE_MODEL", env_quote(str(config.model)))
    text = set_key(text, "EDGE_SOURCE", env_quote(config.source))
    text = set_key(text, "EDGE_ARGS", env_quote(" ".join(config.args)))
    for key, value in config.mqtt_login:  # the broker's login: here (mode 0600), never on a command line
        text = set_key(text, key, env_quote(value))
    return f"{MARKER} {__version__} for {config.name}.service.\n{text}"


def template(name: str) -> str:
    """A file of ``systemd/`` (installed as the ``edge.systemd`` package data)."""
    return package_text("edge.systemd", name)


def set_key(text: str, key: str, value: str) -> str:
    """``text`` with its one ``KEY=...`` (or commented ``#KEY=...``) line set to ``KEY=value``."""
    pattern = re.compile(rf"^#?{re.escape(key)}=.*$", re.MULTILINE)
    if len(pattern.findall(text)) != 1:
        raise RuntimeError(f"the template has no single {key}= line")  # a bug in systemd/, not the user's
    return pattern.sub(lambda _: f"{key}={value}", text)


def uncomment(text: str, line: str) -> str:
    if f"\n#{line}\n" not in text:
        raise RuntimeError(f"the template has no #{line} line")
    return text.replace(f"\n#{line}\n", f"\n{line}\n")


def exec_quote(word: str, variables: bool = True) -> str:
    """One word of a unit's command line (or, ``variables=False``, of a path list), escaped and quoted if need be."""
    if re.search(r"[\x00-\x1f\x7f]", word):  # a newline would end the directive and start one of its own
        raise ServiceError("a path or flag of the unit may not hold a newline or other control character",
                           EXIT_USAGE)
    word = word.replace("%", "%%")
    if variables:
        word = word.replace("$", "$$")
    if word and not re.search(r"[\s\"'\\;]", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def env_quote(value: str) -> str:
    """A value for an EnvironmentFile= line: bare when plain, else double-quoted with \\ " ` $ escaped."""
    if re.search(r"[\x00-\x1f\x7f]", value):  # a newline starts a line of its own; systemd drops the rest
        raise ServiceError("a value of the environment file may not hold a newline or other control character "
                           "(not shown: it may be a password)", EXIT_USAGE)
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]*", value):
        return value
    return '"' + re.sub(r'(["\\`$])', r"\\\1", value) + '"'


# ---------------------------------------------------------------------------------------------- build

def build_config(args: argparse.Namespace, extras: Sequence[str]) -> ServiceConfig:
    """Check the install options and the edge-classify flags; the config to render (ServiceError if bad)."""
    name = service_name(args.name)
    model = Path(args.model).expanduser().absolute()
    if not model.is_file():
        raise ServiceError(f"model file not found: {args.model}" if not model.exists()
                           else f"--model {args.model} is not a file", EXIT_USAGE)
    source, listed, videos = service_sources(args)
    flags = edge_flags(model, ("--sources" if listed else "--source", source), extras)
    spool_flags, mqtt_login = mqtt_settings(name, flags, extras)
    labels = flags.labels
    if labels is not None and not labels.expanduser().is_file():
        raise ServiceError(f"--labels {labels}: no such file", EXIT_USAGE)
    output = flags.output.expanduser().absolute() if flags.output is not None else None
    writable = output_folder(name, output, flags.output, (model, labels, *videos))
    command = tuple(edge_classify_command())
    ca = Path(flags.mqtt_ca).expanduser().absolute() if flags.mqtt_ca else None
    read = [model, labels, *videos, output, ca, *map(Path, command[:1]), Path(sys.prefix), Path(__file__).parent]
    if listed:
        read.append(Path(source))
    user = service_user(args.user, check_account=args.root is None)  # who runs it, before where its files are
    if args.root is None:  # the service is for this machine, a dry run's too: what only this machine can tell
        check_here(name, read, writable, flags.output)
    plain, quoted = split_spaced_paths(absolute_paths(extras))
    uris = listed or [source]
    return ServiceConfig(name=name, user=user, command=command, model=model, source=source,
                         args=tuple(plain) + tuple(spool_flags), quoted_args=tuple(quoted), sources_file=bool(listed),
                         csi=any(map(is_csi, uris)), network=any(map(is_network, uris)) or bool(flags.mqtt),
                         writable=writable,
                         mqtt_login=mqtt_login + serve_token(flags),
                         protect_home="read-only" if _needs_home(read, user) else "yes")


def service_sources(args: argparse.Namespace) -> Tuple[str, List[str], List[Path]]:
    """EDGE_SOURCE (``--source``, ``--camera``, or the absolute path of a ``--sources`` file), the file's sources
    (empty without one), and the absolute paths of the video files among them."""
    if args.camera is None and args.source is None and args.sources is None:
        raise ServiceError("say what to classify: --source URI (csi://0, /dev/video0, a file, rtsp://...), "
                           "--camera N, or --sources FILE (several sources, one per line)", EXIT_USAGE)
    given = (args.camera or []) + (args.source or [])
    if len(given) > 1:
        raise ServiceError("several sources in one service: write them in a file, one per line ([NAME=]URI), and "
                           "pass --sources FILE", EXIT_USAGE)
    camera = args.camera[0] if args.camera else None
    if camera is not None and camera < 0:
        raise ServiceError(f"--camera takes a camera number (0 is /dev/video0), not {camera}", EXIT_USAGE)
    if args.sources is not None:
        from edge.sources.sourcelist import SourceListError, read_sources_file

        path = Path(args.sources).expanduser().absolute()
        try:
            listed = [entry.uri for entry in read_sources_file(path)]
        except SourceListError as exc:
            raise ServiceError(str(exc), EXIT_USAGE) from None
        files = [uri for uri in listed if local_file(uri) is not None]
        relative = [uri for uri in files if not Path(uri).expanduser().is_absolute()]
        if relative:
            raise ServiceError(f"--sources {path}: {relative[0]} is a relative path; the service starts in another "
                               "folder, so write video files' full paths", EXIT_USAGE)
        return str(path), listed, [_existing_video(uri) for uri in files]
    source = str(camera) if camera is not None else args.source[0].strip()
    if local_file(source) is None:
        return source, [], []
    video = _existing_video(source)
    return str(video), [], [video]


def _existing_video(source: str) -> Path:
    video = local_file(source)
    if video is None or not video.is_file():
        raise ServiceError(f"--source {source}: no such video file", EXIT_USAGE)
    return video


def output_folder(name: str, output: Optional[Path], given: Optional[Path],
                  inputs: Sequence[Optional[Path]]) -> Optional[Path]:
    """The folder an ``--output`` opens for writing (ReadWritePaths=); None without one or inside the service's own."""
    if output is None:
        return None
    if any(p is not None and _same_file(output, p) for p in inputs):
        raise ServiceError(f"--output {given} is one of the service's inputs; it would be overwritten", EXIT_USAGE)
    if _inside(output, _service_dirs(name)):
        return None
    check_writable_folder(output.parent, given)
    return output.parent


def check_here(name: str, read: Sequence[Optional[Path]], writable: Optional[Path], given: Optional[Path]) -> None:
    """What a service on this machine needs: the folder of its --output, and no input under /tmp."""
    if writable is not None and not writable.is_dir():
        raise ServiceError(f"--output {given}: no folder {writable} to write it in", EXIT_USAGE)
    hidden = [p for p in read if p is not None and _inside(p.absolute(), PRIVATE_TMP_DIRS)]
    if hidden:
        raise ServiceError(f"{hidden[0]} is under /tmp, which the service does not share (and which boot "
                           f"clears): move it, e.g. to /opt or /var/lib/{name}", EXIT_USAGE)


def check_writable_folder(folder: Path, given: Path) -> None:
    """The folder an --output opens to the service must not be / or a system tree (the unit would protect nothing)."""
    for candidate in {folder, Path(os.path.realpath(str(folder)))}:  # a symlink into /etc is /etc
        text = str(candidate)
        if text in SYSTEM_FOLDERS or _inside(candidate, SYSTEM_TREES):
            raise ServiceError(f"--output {given}: the service would get write access to {text}, a system folder; "
                               f"write into a folder of its own, e.g. /var/lib/edge-classify or /srv/videos",
                               EXIT_USAGE)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(str(a), str(b))
    except OSError:
        return os.path.realpath(str(a)) == os.path.realpath(str(b))


def edge_flags(model: Path, source: Tuple[str, str], extras: Sequence[str]) -> argparse.Namespace:
    """The flags the service will run edge-classify with, parsed by edge-classify's own parser."""
    from edge.cli import build_parser, check_values

    shown = " ".join(extras)
    if any(word == "--image" or word.startswith("--image=") for word in extras):
        raise ServiceError("--image: a service classifies a camera, a video or a stream (--source, --camera)",
                           EXIT_USAGE)
    for previous, word in zip([""] + list(extras), extras):
        if previous in PATH_FLAGS or word.partition("=")[0] in PATH_FLAGS:
            continue  # a path: quoted in ExecStart= when it needs to be (split_spaced_paths)
        if re.search(r"[\s\"'\\]", word):
            raise ServiceError(f"{word!r}: flags go to EDGE_ARGS, which systemd splits at spaces, so a value "
                               "cannot hold spaces, quotes or backslashes (rename the file)", EXIT_USAGE)

    def refuse(message: str) -> None:
        raise ServiceError(f"edge-classify {shown}: {message}" if shown else message, EXIT_USAGE)

    parser = build_parser()
    parser.error = refuse  # type: ignore[assignment]  # one line, no exit, no usage dump
    flags = parser.parse_args(["--model", str(model), *source, *extras])  # source: ("--source", URI) or --sources
    problem = check_values(flags)  # a value edge-classify would refuse at every start
    if problem:
        refuse(problem)
    if flags.display:
        raise ServiceError("--display: a service has no screen (use --output FILE for a labelled video)", EXIT_USAGE)
    from edge.sinks.telemetry import check_telemetry_arguments
    from edge.sinks.web import check_serve_arguments

    problem = check_telemetry_arguments(flags) or check_serve_arguments(flags)  # beyond loopback: $EDGE_SERVE_TOKEN
    if problem:
        raise ServiceError(problem, EXIT_USAGE)
    return flags


def mqtt_settings(name: str, flags: argparse.Namespace, extras: Sequence[str],
                  environ: Optional[Mapping[str, str]] = None) -> Tuple[List[str], Tuple[Tuple[str, str], ...]]:
    """For ``--mqtt``: the spool flag to add (the service's state folder, its only writable place) and the login
    to write into the environment file, taken from install's own ``$EDGE_MQTT_USERNAME`` / ``$EDGE_MQTT_PASSWORD``
    (``sudo --preserve-env=EDGE_MQTT_USERNAME,EDGE_MQTT_PASSWORD edge-service install ...``)."""
    if not flags.mqtt:
        return [], ()
    state = f"/{STATE_DIR}/{name}"
    if flags.mqtt_spool and not _inside(Path(flags.mqtt_spool).expanduser().absolute(), [state]):
        raise ServiceError(f"--mqtt-spool {flags.mqtt_spool}: the service can write only under {state}; leave "
                           f"--mqtt-spool out (the spool goes to {state}/mqtt)", EXIT_USAGE)
    added = [] if flags.mqtt_spool else ["--mqtt-spool", f"{state}/mqtt"]
    env = os.environ if environ is None else environ
    login = tuple((key, env[key]) for key in ("EDGE_MQTT_USERNAME", "EDGE_MQTT_PASSWORD") if env.get(key))
    return added, login


def serve_token(flags: argparse.Namespace,
                environ: Optional[Mapping[str, str]] = None) -> Tuple[Tuple[str, str], ...]:
    """For ``--serve`` or ``--metrics-port``: install's own ``$EDGE_SERVE_TOKEN``, for the environment file (mode 0600)."""
    env = os.environ if environ is None else environ
    if (flags.serve is None and flags.metrics_port is None) or not env.get("EDGE_SERVE_TOKEN"):
        return ()
    return (("EDGE_SERVE_TOKEN", env["EDGE_SERVE_TOKEN"]),)


def service_name(name: str) -> str:
    name = name[: -len(".service")] if name.endswith(".service") else name
    if not NAME_PATTERN.fullmatch(name):
        raise ServiceError(f"--name {name!r}: use letters, digits and _ . - (at most 64)", EXIT_USAGE)
    return name


def service_user(user: Optional[str], check_account: bool) -> str:
    """``--user``, else the account that ran sudo; never root. With ``check_account``, it must exist here."""
    if user is None:
        user = os.environ.get("SUDO_USER") or (_current_user() if os.geteuid() != 0 else None)
    if not user or user == "root":
        raise ServiceError("--user USER: the unprivileged account that runs the service (it must be able to "
                           "read the model); the service never runs as root", EXIT_USAGE)
    if not USER_PATTERN.fullmatch(user):
        raise ServiceError(f"--user {user!r} is not a user name", EXIT_USAGE)
    if user.isdigit() and int(user) == 0:  # systemd reads User=0 (or 00) as uid 0: root
        raise ServiceError(f"--user {user} is root's number; the service must run unprivileged", EXIT_USAGE)
    if check_account:
        import grp
        import pwd

        try:
            uid = pwd.getpwuid(int(user)).pw_uid if user.isdigit() else pwd.getpwnam(user).pw_uid
        except KeyError:
            raise ServiceError(f"no user {user!r} here: create one (sudo useradd --system --groups video "
                               f"--no-create-home {user}) or pass another --user", EXIT_USAGE) from None
        if uid == 0:
            raise ServiceError(f"--user {user} is root; the service must run unprivileged", EXIT_USAGE)
        try:
            grp.getgrnam("video")
        except KeyError:
            raise ServiceError("no group 'video' here (the unit adds it for the camera and the GPU): "
                               "sudo groupadd --system video", EXIT_FAILED) from None
    return user


def edge_classify_command() -> List[str]:
    """The absolute command that runs edge-classify: the script beside this one or Python, else on PATH."""
    folders = [Path(sys.argv[0]).absolute().parent] if sys.argv and sys.argv[0] else []
    for folder in folders + [Path(sys.executable).parent]:  # sudo resets PATH; a venv keeps both together
        candidate = folder / "edge-classify"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    found = shutil.which("edge-classify")
    if found:
        return [str(Path(found).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "edge.cli"]


def local_file(source: str) -> Optional[Path]:
    """The absolute path of a video-file source; None for cameras, streams and pipelines."""
    if contract.source_kind(source).kind != "file":
        return None
    return Path(source).expanduser().absolute()


def is_csi(source: str) -> bool:
    return contract.source_kind(source).kind == "csi" or "nvarguscamerasrc" in source


def is_network(source: str) -> bool:
    kind = contract.source_kind(source).kind
    if kind == "gstreamer":
        return any(element in source for element in NETWORK_ELEMENTS)
    return kind == "stream"


def absolute_paths(extras: Sequence[str]) -> List[str]:
    """``extras`` with the values of ``--labels`` and ``--output`` made absolute (the service runs elsewhere)."""
    out: List[str] = []
    words = list(extras)
    while words:
        word = words.pop(0)
        flag, equals, value = word.partition("=")
        if word in PATH_FLAGS and words:
            out += [word, str(Path(words.pop(0)).expanduser().absolute())]
        elif equals and flag in PATH_FLAGS:
            out.append(f"{flag}={Path(value).expanduser().absolute()}")
        else:
            out.append(word)
    return out


def split_spaced_paths(words: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``words`` as (those for EDGE_ARGS, the path flags whose value holds a space, quote or backslash)."""
    plain: List[str] = []
    quoted: List[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        pair = [word, words[index + 1]] if word in PATH_FLAGS and index + 1 < len(words) else [word]
        value = pair[-1] if len(pair) == 2 else word.partition("=")[2]
        needs_quotes = (len(pair) == 2 or word.partition("=")[0] in PATH_FLAGS) and re.search(r"[\s\"'\\]", value)
        (quoted if needs_quotes else plain).extend(pair)
        index += len(pair)
    return plain, quoted


def _needs_home(paths: Sequence[Optional[Path]], user: str) -> bool:
    """Whether the service must see /home (read-only): a path it reads is there, or the user's own site-packages."""
    if any(p is not None and (_inside(p.absolute(), HOME_DIRS) or _inside(p.resolve(), HOME_DIRS)) for p in paths):
        return True
    try:
        import pwd

        home = Path(pwd.getpwnam(user).pw_dir)
    except (KeyError, ImportError):
        return False
    return _inside(home, HOME_DIRS) and any((home / ".local" / "lib").glob("python3*/site-packages"))


def _inside(path: Path, folders: Sequence[str]) -> bool:
    text = str(path)
    return any(text == f or text.startswith(f.rstrip("/") + "/") for f in map(str, folders))


def _service_dirs(name: str) -> Tuple[str, str]:
    return f"/{STATE_DIR}/{name}", f"/{CACHE_DIR}/{name}"


def _current_user() -> Optional[str]:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


# ---------------------------------------------------------------------------------------------- commands

def install(args: argparse.Namespace, extras: Sequence[str]) -> int:
    config = build_config(args, extras)
    root = _root(args)
    unit = render_unit(config)
    files = [(unit_path(root, config.name), unit, 0o644),
             (env_path(root, config.name), render_environment(config), 0o600)]  # it may hold stream passwords
    marker = f"{MARKER} {__version__}: a folder of {config.name}.service; `edge-service uninstall --purge` deletes it\n"
    files += [(folder / FOLDER_MARKER, marker, 0o644) for folder in owned_folders(root, config.name, unit)]
    if args.dry_run:
        for path, text, _ in files[:2]:
            text = re.sub(r"^(EDGE_MQTT_PASSWORD=|EDGE_SERVE_TOKEN=).+$", r"\1(set, not shown)", text,
                          flags=re.MULTILINE)
            print(f"# ---- {path}\n{text}", end="" if text.endswith("\n") else "\n")
        return EXIT_OK
    if args.root is not None:
        _check_root(root)
    write_files(files)
    written = " and ".join(str(path) for path, _, _ in files[:2])
    if args.root is not None:
        print(f"wrote {written}\non the target: systemctl daemon-reload && systemctl enable --now {config.name}")
        return EXIT_OK
    systemctl("daemon-reload")
    systemctl("enable", "--quiet", config.name)
    systemctl("restart", "--no-block", config.name)
    print(f"wrote {written}\nstarted {config.name} (and enabled at boot) as {config.user}, "
          f"ProtectHome={config.protect_home}")
    print("the first start on TensorRT builds an engine, minutes on a Nano (cached for the next starts)")
    print(f"  status: edge-service status --name {config.name}\n  logs:   journalctl -u {config.name} -f")
    return EXIT_OK


def owned_folders(root: Path, name: str, unit: str) -> List[Path]:
    """The folders of ``unit`` that install is to create and mark; ServiceError if ``name`` belongs to something
    else: a unit in any folder systemd reads, an environment file, /etc/NAME, or a folder edge-service did not
    create (the folders of a unit it wrote are its own: it marks only those it creates)."""
    folders = unit_folders(root, unit)
    held = [root / d / f"{name}.service" for d in OTHER_UNIT_DIRS] + [root / d / name for d in PACKAGE_DIRS]
    for path in held:
        if _exists(path) and path not in folders:
            raise ServiceError(f"{path} exists: the name {name} belongs to another package; choose another --name")
    ours = unit_path(root, name)
    for path in (ours, env_path(root, name)):
        if _exists(path) and not written_by_us(path):
            raise ServiceError(f"{path} exists and was not written by edge-service; choose another --name "
                               "(or remove it by hand if you mean to replace it)")
    reinstall = _exists(ours)  # and ours: systemd made its folders for our own unit
    unmarked = [f for f in folders if _exists(f) and not carries_marker(f)]
    if unmarked and (not reinstall or not all(f.is_dir() and not f.is_symlink() for f in unmarked)):
        raise ServiceError(f"{unmarked[0]} exists and edge-service did not create it; choose another --name")
    return [f for f in folders if f not in unmarked]


def unit_folders(root: Path, unit: str) -> List[Path]:
    """The folders systemd makes for ``unit``'s StateDirectory=, CacheDirectory=, ... (under ``root``)."""
    pattern = re.compile(rf"^({'|'.join(FOLDER_KEYS)})=(.*)$", re.MULTILINE)
    return [root / FOLDER_KEYS[key] / word for key, value in pattern.findall(unit) for word in value.split()]


def carries_marker(folder: Path) -> bool:
    """Whether install created ``folder`` (a real folder, not a link, holding its marker file)."""
    return folder.is_dir() and not folder.is_symlink() and written_by_us(folder / FOLDER_MARKER)


def written_by_us(path: Path) -> bool:
    """Whether ``path`` is a file (not a link) that starts with edge-service's marker."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(str(path), encoding="utf-8", errors="replace") as handle:
            return handle.read(len(MARKER)) == MARKER
    except OSError as exc:
        raise ServiceError(f"cannot read {path}: {exc.strerror or exc}") from None


def uninstall(args: argparse.Namespace) -> int:
    name = service_name(args.name)
    root = _root(args)
    unit, env = unit_path(root, name), env_path(root, name)
    if not _exists(unit):
        raise ServiceError(f"no service {name} here ({unit} does not exist)")
    if not written_by_us(unit):
        raise ServiceError(f"{unit} was not written by edge-service; remove it by hand if you mean to")
    doomed = [unit] + ([env] if written_by_us(env) else [])
    folders = [f for f in unit_folders(root, unit.read_text(encoding="utf-8", errors="replace"))
               if args.purge and _exists(f)]
    doomed += [f for f in folders if carries_marker(f)]
    kept = "".join(f"; kept {f} (edge-service did not create it)" for f in folders if f not in doomed)
    if args.dry_run:
        stop = f"stop and disable {name}, " if args.root is None else ""
        print(f"would {stop}remove " + ", ".join(map(str, doomed)) + kept)
        return EXIT_OK
    if args.root is None:
        systemctl("disable", "--now", "--quiet", name)
    for path in doomed:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(str(path))
            else:
                path.unlink()
        except OSError as exc:
            raise ServiceError(f"cannot remove {path}: {exc.strerror or exc}") from None
    if args.root is None:
        systemctl("daemon-reload")
        systemctl("reset-failed", name, check=False)  # forget a failed state, if any
    else:
        for path in doomed:
            _prune_empty(path.parent, root)
    print(f"removed {name}: " + ", ".join(map(str, doomed)) + kept)
    return EXIT_OK


def status(args: argparse.Namespace) -> int:
    """``systemctl status`` as is, then the last STATUS= line; the exit code of ``systemctl status``."""
    name = service_name(args.name)
    _check_systemd("nothing to ask")
    sys.stdout.flush()
    code = subprocess.run(["systemctl", "status", "--no-pager", "--lines", str(args.lines), name]).returncode
    shown = subprocess.run(["systemctl", "show", "--property", "StatusText", "--value", name],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    line = shown.stdout.strip() if shown.returncode == 0 else ""
    print(f"\nlast status: {line or '(none reported yet)'}", flush=True)
    return code


def deploy_or_rollback(args: argparse.Namespace) -> int:
    """``deploy MODEL`` / ``rollback``: edge.service.deploy, with this module's systemctl and folders."""
    from edge.service import deploy

    name = service_name(args.name)
    _require_systemd(args.command)
    if not args.timeout > 0 or not args.settle >= 0:
        raise ServiceError("--timeout must be more than 0 seconds and --settle 0 or more", EXIT_USAGE)
    env_file = env_path(SYSTEM_ROOT, name)
    try:
        if args.command == "deploy":
            return deploy.deploy(SYSTEM_ROOT, name, args.model, env_file, args.timeout, args.settle, systemctl)
        return deploy.rollback(SYSTEM_ROOT, name, env_file, args.timeout, systemctl)
    except deploy.DeployError as exc:
        raise ServiceError(str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise ServiceError(f"{args.command}: {exc.strerror or exc}: {exc.filename or ''}") from None


def unit_path(root: Path, name: str) -> Path:
    return root / UNIT_DIR / f"{name}.service"


def env_path(root: Path, name: str) -> Path:
    return root / ENV_DIR / name


def write_files(files: Sequence[Tuple[Path, str, int]]) -> None:
    """Write every file, or none: each goes to a new temporary file first, then all are renamed into place."""
    staged: List[Tuple[Path, Path]] = []
    target = Path()
    try:
        for target, text, mode in files:
            target.parent.mkdir(parents=True, exist_ok=True)
            staged.append((write_private(target, text, mode), target))
        for temporary, target in staged:
            os.replace(str(temporary), str(target))
    except OSError as exc:
        for temporary, _ in staged:
            try:
                temporary.unlink()
            except FileNotFoundError:
                pass
        raise ServiceError(f"cannot write {target}: {exc.strerror or exc}") from None


def write_private(target: Path, text: str, mode: int) -> Path:
    """``text`` in a new file beside ``target``, set to ``mode`` once written; its path. mkstemp creates it
    O_EXCL|O_NOFOLLOW with mode 0600 under a random name: no link is followed, and a password in it is never
    readable by others, not even while it is written."""
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".edge-service", dir=str(target.parent))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fchmod(stream.fileno(), mode)
            os.fsync(stream.fileno())
    except OSError:
        os.unlink(name)
        raise
    return Path(name)


def systemctl(*words: str, check: bool = True) -> None:
    result = subprocess.run(["systemctl", *words], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            universal_newlines=True)
    if check and result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        raise ServiceError(f"systemctl {' '.join(words)} failed: {detail}")


def _require_systemd(command: str) -> None:
    if os.geteuid() != 0:
        raise ServiceError(f"{command} writes /etc/systemd/system and runs systemctl: run it with sudo "
                           "(or pass --root DIR to write the files only)")
    _check_systemd("use --root DIR to write the files for another machine")


def _check_systemd(advice: str) -> None:
    if shutil.which("systemctl") is None or not SYSTEMD_RUNTIME.is_dir():
        raise ServiceError(f"systemd is not running here (no {SYSTEMD_RUNTIME}): {advice}")


def _exists(path: Path) -> bool:
    """Whether anything is at ``path``, a dangling link included."""
    return os.path.lexists(str(path))


def _root(args: argparse.Namespace) -> Path:
    return Path(args.root).absolute() if args.root is not None else SYSTEM_ROOT


def _check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise ServiceError(f"--root {root} is not a folder")


def _prune_empty(folder: Path, root: Path) -> None:
    """Remove ``folder`` and its parents while they are empty, stopping at ``root`` (which stays)."""
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


# ---------------------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-service",
        description="Run edge-classify at boot as a hardened systemd service (Type=notify, watchdog, journal).")
    add_version(parser, __version__)
    commands = parser.add_subparsers(dest="command", metavar="{install,uninstall,status,deploy,rollback}")
    commands.required = True

    install_parser = commands.add_parser(
        "install", allow_abbrev=False, help="write the unit and its environment file, enable and start it",
        description="Write the unit and its environment file, reload systemd, enable and start the service. "
                    "Any other edge-classify flag after these (--json, --topk K, --smooth N, --threshold P, "
                    "--width/--height/--fps, --output FILE, --labels FILE, --backend, --device, -v/-q, ...) is "
                    "passed to edge-classify through the environment file.",
        usage="sudo edge-service install --model FILE (--source URI | --camera N | --sources FILE) [--name NAME] "
              "[--user USER] [--root DIR] [--dry-run] [edge-classify flags...]")
    install_parser.add_argument("--model", required=True, metavar="FILE", help="the .onnx or .ts artifact to run")
    what = install_parser.add_mutually_exclusive_group()
    what.add_argument("--source", metavar="URI", action="append",
                      help="csi://N, /dev/videoN, a video file, rtsp:// or http:// stream, or a GStreamer pipeline")
    what.add_argument("--camera", type=int, metavar="N", action="append", help="a V4L2 camera index (/dev/videoN)")
    what.add_argument("--sources", metavar="FILE",
                      help="several sources in one service, one per line: [NAME=]URI [roi=X,Y,W,H] (the file is "
                           "read at every start)")
    _common(install_parser)
    install_parser.add_argument("--user", metavar="USER",
                                help="the unprivileged account that runs it (default: the one that ran sudo)")

    uninstall_parser = commands.add_parser("uninstall", allow_abbrev=False,
                                           help="stop, disable and remove the service")
    _common(uninstall_parser)
    uninstall_parser.add_argument("--purge", action="store_true",
                                  help="also delete its state and engine cache (/var/lib/NAME, /var/cache/NAME) "
                                       "where install created them")

    status_parser = commands.add_parser("status", allow_abbrev=False,
                                        help="what systemd says, and the last status line the service reported")
    status_parser.add_argument("--name", default=DEFAULT_NAME, help=f"the service name (default {DEFAULT_NAME})")
    status_parser.add_argument("--lines", type=int, default=10, metavar="N", help="journal lines to show (default 10)")
    add_deploy_parsers(commands)  # deploy, rollback: edge.service.deploy
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"the service name (default {DEFAULT_NAME})")
    parser.add_argument("--root", metavar="DIR", help="write under DIR instead of / and run no systemctl")
    parser.add_argument("--dry-run", action="store_true", help="print what it would do; change nothing")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    one_line_usage_errors(parser)
    try:
        args, extras = parser.parse_known_args(argv)  # install passes the rest on to edge-classify
        if extras and args.command != "install":
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
    except SystemExit as exc:  # argparse has printed its message
        return exit_code_of(exc)
    return run_guarded("edge-service", lambda: _run(args, extras), verbose="-v" in extras or "--verbose" in extras)


def _run(args: argparse.Namespace, extras: Sequence[str]) -> int:
    if args.command == "status":
        return status(args)
    if args.command in ("deploy", "rollback"):
        return deploy_or_rollback(args)
    service_name(args.name)  # a bad name is a usage error, whoever runs it
    if args.root is None and not args.dry_run:
        _require_systemd(args.command)
    return install(args, extras) if args.command == "install" else uninstall(args)


if __name__ == "__main__":
    sys.exit(main())
