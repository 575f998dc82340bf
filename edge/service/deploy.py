"""``edge-service deploy`` and ``rollback``: a new model for a running service, with a way back by itself.

    sudo edge-service deploy new_model.onnx            # 0 switched; 1 refused or rolled back; 2 usage
    sudo edge-service deploy new_model.onnx --name cam1 --timeout 120 --settle 60
    sudo edge-service rollback --name cam1             # back to <model>.previous by hand

``deploy`` copies the artifact atomically over the file the service runs (``EDGE_MODEL`` of
``/etc/default/NAME``), keeping the one before as ``<model>.previous``, then ``systemctl reload``\\ s the
service: edge-classify loads it beside the running model, checks it (and its ``--canary``), and swaps
it in between two frames (``edge.model.swap``). The service reports what it runs in
``/var/lib/NAME/active-model.json`` (its StateDirectory, written atomically). deploy waits for that file
to name the new sha256 (switched), or a refusal of it (the previous file is copied back: refused), and
rolls back by itself (previous file back, reload) when nothing is reported within ``--timeout`` or the
service is not active throughout the ``--settle`` seconds after the switch.
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from edge.errors import EXIT_FAILED, EXIT_OK

STATE_DIR = "var/lib"
STATE_FILE = "active-model.json"  # edge.model.swap.STATE_FILE
POLL_S = 0.2


def add_deploy_parsers(commands: Any) -> None:
    """The ``deploy`` and ``rollback`` subcommands (edge-service's parser)."""
    deploy = commands.add_parser("deploy", allow_abbrev=False,
                                 help="swap a new model into the running service; roll back if it does not take",
                                 description="Copy MODEL over the service's model (keeping <model>.previous), "
                                             "reload the service, wait until it runs MODEL; roll back by itself "
                                             "when it refuses MODEL, does not report in time, or stops.")
    deploy.add_argument("model", type=Path, metavar="MODEL", help="the new .onnx or .ts artifact")
    _timing(deploy)
    rollback = commands.add_parser("rollback", allow_abbrev=False,
                                   help="put <model>.previous back into the running service")
    _timing(rollback)


def _timing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="edge-classify", help="the service name (default edge-classify)")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="S",
                        help="seconds to wait for the service to report the model (default 120)")
    parser.add_argument("--settle", type=float, default=60.0, metavar="S",
                        help="after the switch, seconds the service must stay active (default 60)")


class DeployError(Exception):
    """Something deploy cannot do (one line; exit 2)."""


def deploy(root: Path, name: str, new: Path, env_file: Path, timeout: float, settle: float,
           systemctl: Any) -> int:
    target = service_model(env_file)
    _check_model(new, target)
    new_sha, previous = sha256_of(new), backup_path(target)
    if target.exists() and sha256_of(target) == new_sha:
        print(f"{name} already has {new.name} (sha256 {new_sha[:12]}): nothing to do")
        return EXIT_OK
    kept = previous.with_name(f".{previous.name}.before-deploy")  # put back if this deploy is undone
    had_previous = previous.exists()
    if previous.exists():
        copy_atomically(previous, kept)
    if target.exists():
        copy_atomically(target, previous)
    copy_atomically(new, target)
    started = time.time()
    try:
        systemctl("reload", name)
    except Exception:  # no ExecReload= (a unit from before deploy existed), or not running: nothing changed there
        _undo(target, previous, kept, had_previous)
        raise
    outcome = wait_for_report(state_path(root, name), new_sha, started, timeout, lambda: is_active(name))
    if outcome == "active" and stays_active(name, settle):
        if kept.exists():
            kept.unlink()
        print(f"switched: {name} runs {new.name} (sha256 {new_sha[:12]})")
        return EXIT_OK
    if not previous.exists():
        print(f"failed: {name} did not take {new.name} and there is no previous model to roll back to")
        return EXIT_FAILED
    _undo(target, previous, kept, had_previous)
    systemctl("reload", name, check=False)
    if outcome == "stopped":
        print(f"rolled back: {name} stopped while loading {new.name}; {target} is the previous model again")
    elif outcome.startswith("refused"):
        print(f"refused: {name} keeps its model ({outcome[len('refused: '):]}); {target} is the previous file again")
    else:
        why = "did not stay active" if outcome == "active" else f"did not report sha256 {new_sha[:12]} in {timeout:g} s"
        print(f"rolled back: {name} {why}; {target} is the previous model again, service reloaded")
    return EXIT_FAILED


def _undo(target: Path, previous: Path, kept: Path, had_previous: bool) -> None:
    """The files as they were before deploy: the previous model back in place, and its own previous."""
    if previous.exists():
        copy_atomically(previous, target)
    if kept.exists():
        os.replace(str(kept), str(previous))
    elif not had_previous and previous.exists():
        previous.unlink()


def rollback(root: Path, name: str, env_file: Path, timeout: float, systemctl: Any) -> int:
    target = service_model(env_file)
    previous = backup_path(target)
    if not previous.is_file():
        raise DeployError(f"no {previous} to roll back to (edge-service deploy keeps one)")
    sha = sha256_of(previous)
    if target.exists():  # the two swap places, so a second rollback undoes the first
        spare = target.with_name(f".{target.name}.rollback")
        copy_atomically(target, spare)
        copy_atomically(previous, target)
        os.replace(str(spare), str(previous))
    else:
        copy_atomically(previous, target)
    started = time.time()
    systemctl("reload", name)
    outcome = wait_for_report(state_path(root, name), sha, started, timeout)
    if outcome == "active":
        print(f"switched: {name} runs the previous model again (sha256 {sha[:12]})")
        return EXIT_OK
    print(f"failed: {name} has not reported sha256 {sha[:12]} ({outcome}); {target} is the previous model")
    return EXIT_FAILED


def service_model(env_file: Path) -> Path:
    """``EDGE_MODEL`` of the service's environment file."""
    try:
        text = env_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeployError(f"cannot read {env_file} ({exc.strerror or exc}): is the service installed "
                          "(edge-service install)?") from None
    for line in text.splitlines():
        if line.startswith("EDGE_MODEL="):
            value = line[len("EDGE_MODEL="):].strip()
            if value.startswith('"') and value.endswith('"'):
                value = value[1:-1].replace('\\"', '"').replace("\\$", "$").replace("\\`", "`").replace("\\\\", "\\")
            return Path(value)
    raise DeployError(f"{env_file} names no EDGE_MODEL")


def _check_model(new: Path, target: Path) -> None:
    if not new.is_file():
        raise DeployError(f"{new}: no such model file")
    if new.suffix.lower() != target.suffix.lower():
        raise DeployError(f"{new} is a {new.suffix or 'suffix-less'} file; the service runs a {target.suffix} "
                          f"model ({target}): export the same format")
    if new.resolve() == target.resolve():
        raise DeployError(f"{new} is the service's own model file: give the new artifact")


def backup_path(target: Path) -> Path:
    return target.with_name(target.name + ".previous")


def state_path(root: Path, name: str) -> Path:
    return root / STATE_DIR / name / STATE_FILE


def sha256_of(path: Path) -> str:
    from edge.model.swap import file_sha256

    return file_sha256(path)


def copy_atomically(source: Path, target: Path) -> None:
    """``source``'s bytes at ``target`` (readable by all, like an installed model), under a temporary name first."""
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".edge-service", dir=str(target.parent))
    try:
        with os.fdopen(handle, "wb") as out, open(str(source), "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fchmod(out.fileno(), 0o644)
            os.fsync(out.fileno())
        os.replace(name, str(target))
    except OSError:
        if os.path.exists(name):
            os.unlink(name)
        raise


def read_state(path: Path) -> Optional[Dict[str, Any]]:
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return facts if isinstance(facts, dict) else None


def wait_for_report(path: Path, sha: str, started: float, timeout: float,
                    alive: Optional[Callable[[], bool]] = None) -> str:
    """``active`` once the service runs ``sha``; ``refused: REASON`` when it refused it; ``stopped`` when
    ``alive()`` (asked about once a second) says no; else ``timeout``."""
    deadline = time.monotonic() + timeout
    next_check = time.monotonic() + 1.0
    while True:
        if alive is not None and time.monotonic() >= next_check:
            next_check = time.monotonic() + 1.0
            if not alive():
                return "stopped"
        facts = read_state(path)
        if facts is not None:
            if facts.get("sha256") == sha:
                return "active"
            refusal = facts.get("last_refusal") or {}
            if refusal.get("sha256") == sha and float(refusal.get("time", 0)) >= started - 1.0:
                return f"refused: {refusal.get('reason', 'no reason given')}"
        if time.monotonic() >= deadline:
            return "timeout"
        time.sleep(POLL_S)


def is_active(name: str) -> bool:
    return subprocess.run(["systemctl", "is-active", "--quiet", name]).returncode == 0


def stays_active(name: str, settle: float) -> bool:
    """Whether ``systemctl is-active`` says active throughout ``settle`` seconds (checked every second)."""
    deadline = time.monotonic() + settle
    while True:
        if not is_active(name):
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())) or 0.01)

