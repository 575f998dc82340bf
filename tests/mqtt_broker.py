"""A Mosquitto started by a test, a subscriber that counts what arrives, and a Prometheus scrape.

Shared by ``tests/test_mqtt.py`` and ``tests/device/test_device_mqtt.py``; runs on Python 3.6 with
paho-mqtt 1.6 as on current Pythons with paho-mqtt 2.
"""

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Broker:
    """A Mosquitto on 127.0.0.1:port with a config written here; ``stop()`` and ``start()`` keep the port."""

    def __init__(self, folder: Path, password_file: Optional[Path] = None, extra: Optional[List[str]] = None) -> None:
        self.port = free_port()
        self.folder = folder
        self.config = folder / "mosquitto.conf"
        lines = (extra or []) + [f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {folder}/",
                 f"log_dest file {folder / 'mosquitto.log'}", "log_type all",
                 # Started as root, mosquitto would switch to the user "mosquitto", who cannot write here.
                 f"user {getpass.getuser()}"]
        lines += [f"password_file {password_file}", "allow_anonymous false"] if password_file else \
            ["allow_anonymous true"]
        self.config.write_text("\n".join(lines) + "\n")
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start: " + (self.folder / "mosquitto.log").read_text()[-500:])

    def stop(self) -> None:
        """SIGTERM, as systemctl stop or a reboot does (it saves the subscriber's session on the way out)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
        self.process = None


class Subscriber:
    """A QoS 1 subscriber to ``prefix/#`` with a persistent session: it gets what was sent while it was away."""

    def __init__(self, port: int, prefix: str, username: Optional[str] = None, password: Optional[str] = None):
        import paho.mqtt.client as mqtt

        self.messages: List[tuple] = []
        self.lock = threading.Lock()
        client_id = f"test-sub-{os.getpid()}-{port}"
        if hasattr(mqtt, "CallbackAPIVersion"):
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        else:
            self.client = mqtt.Client(client_id=client_id, clean_session=False)
        if username:
            self.client.username_pw_set(username, password)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda client, *_args: client.subscribe(prefix + "/#", qos=1)  # paho 1 and 2
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the test's subscriber could not subscribe"

    def _on_message(self, _client, _userdata, message) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload.decode("utf-8"), message.retain))

    def labels(self) -> List[dict]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith("/label")]

    def wait_for(self, condition: Callable[[], bool], seconds: float = 20.0) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.02)
        return condition()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def scrape(port: int) -> Dict[str, float]:
    """``name{labels}`` -> value, parsed by prometheus_client's own parser."""
    return parse_metrics(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode("utf-8"))


def parse_metrics(text: str) -> Dict[str, float]:
    """Prometheus text as ``name{label=value,...}`` (labels sorted; no braces without labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return values
