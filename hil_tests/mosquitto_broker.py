"""A real mosquitto for tests and the telemetry benchmark: plain, or TLS with a password file.

Started on a free port of 127.0.0.1, with its own config and log in a temporary directory (never
/var/lib/mosquitto: as root, mosquitto would drop to user `mosquitto`; `user root` keeps it as is).
Ready means the port accepts connections: no sleeps. `kill()` and `start()` again reuse the port,
so a client configured for it sees the same broker come back; `pause()`/`resume()` make a broker
that accepts TCP but answers nothing (a "slow" broker).

TLS material comes from the `openssl` command line (EC keys: fast): a CA, and a server
certificate for 127.0.0.1 and localhost signed by it. Passwords from `mosquitto_passwd -b -c`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
START_TIMEOUT_S = 10.0
USERNAME = "laserd"
PASSWORD = "correct horse battery staple"


def available() -> str | None:
    """None if mosquitto, mosquitto_passwd and openssl are all here, else what is missing."""
    missing = [p for p in (MOSQUITTO, MOSQUITTO_PASSWD, OPENSSL) if not os.access(p, os.X_OK)]
    return None if not missing else f"missing: {', '.join(missing)} (apt-get install mosquitto openssl)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    other_ca_cert: Path  # a CA that did not sign the server: verification must fail


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_tls_files(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=laserhost test {name}", cwd=directory)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=directory)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=directory,
    )
    return TlsFiles(ca_cert=directory / "ca.crt", server_cert=directory / "server.crt", server_key=directory / "server.key", other_ca_cert=directory / "other-ca.crt")


def make_password_file(path: Path, *, username: str = USERNAME, password: str = PASSWORD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(path), username, password], check=True, capture_output=True, timeout=30)
    path.chmod(0o600)
    return path


@dataclass
class Broker:
    """One mosquitto process. `tls` needs `tls_files`; `password_file` turns anonymous access off."""

    tmp: Path
    tls_files: TlsFiles | None = None
    password_file: Path | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _log: Path = field(init=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _config(self) -> Path:
        lines = [
            "per_listener_settings false",
            f"listener {self.port} 127.0.0.1",
            "persistence false",
            "user root",
            f"log_dest file {self._log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "max_queued_messages 10000",
        ]
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines += ["allow_anonymous true"]
        if self.tls_files is not None:
            lines += [f"cafile {self.tls_files.ca_cert}", f"certfile {self.tls_files.server_cert}", f"keyfile {self.tls_files.server_key}"]
        path = self.tmp / f"mosquitto-{self.port}.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> Broker:
        """Start, on the same port as before if it ran already; return once the port accepts."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # a free port can be taken by someone else before we bind it: try another
            if self.port == 0:
                self.port = free_port()
            self._log = self.tmp / f"mosquitto-{self.port}.log"
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self._config())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if _accepts(self.port):
                    self.starts += 1
                    return self
                time.sleep(0.01)
            else:
                self.stop()
                raise AssertionError(f"mosquitto did not accept on {self.address} within {START_TIMEOUT_S:g} s: {self.log_text()[-1000:]}")
            if self.starts:  # a restart must keep its port: the daemon under test is configured with it
                raise AssertionError(f"mosquitto could not restart on {self.address}: {self.log_text()[-1000:]}")
            self.port = 0
        raise AssertionError(f"mosquitto would not start: {self.log_text()[-1000:]}")

    def log_text(self) -> str:
        try:
            return self._log.read_text(errors="replace")
        except (OSError, AttributeError):
            return ""

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without closing anything cleanly."""
        if self.running:
            assert self.proc is not None
            self.resume()
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: TCP connects still complete (the kernel's backlog), nothing is answered."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.running:
            assert self.proc is not None
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ----- a subscriber for tests: paho in its own thread --------------------------------------------


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    at_s: float  # time.monotonic() when it arrived

    def json(self) -> dict:
        import json

        return json.loads(self.payload)


class Collector:
    """Every message on `topics` (subscribed at QoS 1), in arrival order, kept with its QoS and
    retain flag. Reconnects and resubscribes by itself when the broker comes back."""

    def __init__(self, broker: Broker, topics: list[str], *, ca_file: Path | None = None, username: str | None = None, password: str | None = None) -> None:
        import threading

        import paho.mqtt.client as mqtt

        self.broker = broker
        self.topics = topics
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, clean_session=True)
        if username is not None:
            self._client.username_pw_set(username, password)
        if ca_file is not None:
            self._client.tls_set(ca_certs=str(ca_file))
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:  # noqa: ANN001
        if not reason_code.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        with self._lock:
            self.messages.append(Received(message.topic, bytes(message.payload), message.qos, bool(message.retain), time.monotonic()))

    def start(self) -> Collector:
        self._client.connect("127.0.0.1", self.broker.port, keepalive=5)
        self._client.loop_start()
        if not self._subscribed.wait(timeout=START_TIMEOUT_S):
            raise AssertionError(f"no SUBACK from {self.broker.address}")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def on(self, suffix: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith("/" + suffix)]

    def payloads(self, suffix: str) -> list[dict]:
        return [m.json() for m in self.on(suffix)]

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=START_TIMEOUT_S)


# ----- the schemas ------------------------------------------------------------------------------


def validate(kind: str, payload: dict) -> None:
    """Raise jsonschema.ValidationError unless `payload` is a valid `kind` payload (protocol/schemas)."""
    import json

    import jsonschema

    from controller.telemetry import schema_file

    schema = json.loads(schema_file(kind).read_text())
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(payload)


def validate_all(collector: Collector) -> int:
    """Validate every message the collector saw against its topic's schema; return how many."""
    count = 0
    for m in list(collector.messages):
        kind = m.topic.rsplit("/", 1)[-1]
        if kind in ("status", "telemetry", "event", "session"):
            validate(kind, m.json())
            count += 1
    return count
