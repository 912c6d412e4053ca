"""`renderq demo --cluster` for real (PostgreSQL, SeaweedFS, three coordinators, Blender workers), and the service
units of scripts/systemd checked against the real command line."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from harness import ROOT, find_blender_or_none, wait_for
from renderq.local_servers import WEED_GRPC_OFFSET, WEED_GRPC_SOCKETS, missing_parts

BLENDER = find_blender_or_none()
SYSTEMD = os.path.join(ROOT, "scripts", "systemd")
UNITS = {"renderq-coordinator.service": ("coordinator", "coordinator.env.example"),
         "renderq-worker.service": ("worker", "worker.env.example")}

needs_cluster_parts = pytest.mark.skipif(
    BLENDER is None or bool(missing_parts()),
    reason="the cluster demo needs Blender, PostgreSQL, SeaweedFS, psycopg and boto3 (scripts/test.sh installs them)")


def demo_command(output: str, frames: int = 3) -> list[str]:
    return [sys.executable, "-m", "renderq", "demo", "--cluster", "--frames", str(frames), "--workers", "2",
            "--output", output]


def demo_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}


def what_it_started(stdout: str) -> dict[str, list]:
    """The folders, ports and addresses the demo printed."""
    ports = [int(port) for port in re.findall(r"http://127\.0\.0\.1:(\d+)/$", stdout, re.M)]
    s3_port = int(re.search(r"S3 at http://127\.0\.0\.1:(\d+)", stdout)[1])
    postgres = re.search(r"PostgreSQL: postgresql://postgres@127\.0\.0\.1:(\d+)/\w+ \(folder (\S+)\)", stdout)
    return {"folders": [re.search(r"scratch folder (\S+)", stdout)[1], postgres[2]],
            "ports": [*ports, s3_port, int(postgres[1])], "coordinators": ports, "s3_port": [s3_port]}


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def processes_naming(words: list[str]) -> list[str]:
    """The command lines of running processes that contain any of `words`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    command = handle.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(word in command for word in words):
                found.append(command)
    return found


def assert_everything_stopped(started: dict[str, list]) -> None:
    """No port, process, folder or weed socket of the demo is left."""
    folders = started["folders"]
    # The processes are waited for before the demo exits; a moment for the kernel to reap PostgreSQL's children.
    wait_for(lambda: not processes_naming(folders), 15, "the demo's processes to exit")
    assert [port for port in started["ports"] if listening(port)] == []
    assert [folder for folder in folders if os.path.exists(folder)] == []
    grpc_port = started["s3_port"][0] + WEED_GRPC_OFFSET
    assert [path for path in [WEED_GRPC_SOCKETS.format(port=grpc_port)] if os.path.exists(path)] == []


@needs_cluster_parts
@pytest.mark.timeout(400)
def test_cluster_demo_renders_every_frame_on_three_coordinators_and_stops_everything(tmp_path):
    output = str(tmp_path / "frames")
    demo = subprocess.run(demo_command(output), capture_output=True, text=True, timeout=360, cwd=tmp_path,
                          env=demo_env())
    assert demo.returncode == 0, demo.stderr + demo.stdout
    assert sorted(os.listdir(output)) == [f"f_{n:04d}.png" for n in range(1, 4)]
    started = what_it_started(demo.stdout)
    assert len(started["coordinators"]) == 3
    # The workers were given the three addresses as one list, and the admin token was printed.
    addresses = ",".join(f"http://127.0.0.1:{port}" for port in started["coordinators"])
    assert f"--coordinator {addresses}" in demo.stdout
    assert re.search(r"^admin token: \w{20,}$", demo.stdout, re.M)
    assert "frames per worker:" in demo.stdout
    assert_everything_stopped(started)


@needs_cluster_parts
@pytest.mark.timeout(400)
def test_ctrl_c_stops_the_cluster_demo_and_everything_it_started(tmp_path):
    # 3 frames render in about 2.5 s: a test process the busy machine schedules late could send Ctrl-C after the
    # demo had finished and was already stopping (it ignores Ctrl-C then). 40 frames keep it rendering well past
    # that, and the interrupted demo never renders them all.
    demo = subprocess.Popen(demo_command(str(tmp_path / "frames"), frames=40), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=demo_env())
    lines = []
    try:
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("submitted task"):
                break
        demo.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends it (its children are in sessions of
        # their own)
        rest, errors = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    stdout = "".join(lines) + rest
    assert demo.returncode == 130, errors + stdout
    assert "demo interrupted" in errors
    assert_everything_stopped(what_it_started(stdout))


def test_cluster_demo_refuses_a_first_port_with_no_room_for_three_coordinators(tmp_path):
    refused = subprocess.run([sys.executable, "-m", "renderq", "demo", "--cluster", "--port", "65534"],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path, env=demo_env())
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("renderq: --port 65534 leaves no room for 3 coordinators (the last port is "
                                      "65535)")
    assert refused.stdout == ""  # nothing started, no scratch folder made


def parse_unit(path: str) -> configparser.ConfigParser:
    """A strict parse: no key twice in a section, no section twice, no text outside a section."""
    unit = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"))
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd's keys are case-sensitive
    with open(path, encoding="utf-8") as handle:
        unit.read_file(handle)
    return unit


@pytest.mark.parametrize("name", sorted(UNITS))
def test_service_unit_parses_and_starts_the_real_command_with_flags_and_settings_it_has(name, tmp_path):
    command, env_example = UNITS[name]
    unit = parse_unit(os.path.join(SYSTEMD, name))
    service = unit["Service"]
    assert service["Restart"] == "always"
    assert service["EnvironmentFile"].startswith("/etc/renderq/")
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    if command == "worker":
        # The worker gives its frames back on SIGTERM: it alone gets it, with time to do so.
        assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
        assert int(service["TimeoutStopSec"]) >= 30

    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/bin/renderq") and argv[1] == command
    helped = subprocess.run([sys.executable, "-m", "renderq", command, "--help"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert helped.returncode == 0, helped.stderr
    flags = {word.split("=")[0] for word in argv[2:] if word.startswith("--")}
    assert flags and {flag for flag in flags if not re.search(rf"(^|[\s\[,]){flag}\b", helped.stdout)} == set()
    # Every RENDERQ_* setting of the example environment file is one the command reads.
    with open(os.path.join(SYSTEMD, env_example), encoding="utf-8") as handle:
        settings = set(re.findall(r"^#?(RENDERQ_\w+)=", handle.read(), re.M))
    assert settings and {name for name in settings if name not in helped.stdout} == set()

    analyze = shutil.which("systemd-analyze")
    renderq = os.path.join(os.path.dirname(sys.executable), "renderq")
    if analyze and os.access(renderq, os.X_OK):
        # The unit as installed, with the binary where this checkout's venv has it (verify checks it exists).
        with open(os.path.join(SYSTEMD, name), encoding="utf-8") as handle:
            text = handle.read().replace(argv[0], renderq)
        (tmp_path / name).write_text(text, encoding="utf-8")
        verified = subprocess.run([analyze, "verify", str(tmp_path / name)], capture_output=True, text=True,
                                  timeout=60)
        assert verified.returncode == 0, verified.stdout + verified.stderr
