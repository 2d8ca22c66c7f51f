"""A private libvirt 9.0 "host" for tests: libvirtd and virtlogd in their own namespaces.

libvirt's system daemon keeps its configuration, sockets, state and capability cache in fixed
paths (/etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt).  A
:class:`LibvirtHost` runs one daemon pair in new pid, mount, uts and network namespaces where a
private directory is mounted over each of those paths, so the machine's own libvirt (if any) is
untouched, two hosts can run side by side with different host names and host UUIDs, and killing
the namespace's first process ends every daemon and emulator it started.  The daemon's socket
lives in the private directory, which the test process sees too: ``virsh -c`` reaches it without
entering the namespaces.  Requires root, libvirt-daemon-system, util-linux's unshare and iproute2.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

__all__ = ["LibvirtHost", "libvirt_unavailable", "link_hosts"]

_PRIVATE = ("/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt",
            "/var/log/libvirt")  # fmt: skip


_REAPER = (
    "import os, time\n"
    "while True:\n"
    "    try:\n"
    "        os.wait()\n"
    "    except ChildProcessError:\n"
    "        time.sleep(0.5)\n"
)


def libvirt_unavailable() -> str | None:
    """Why libvirt cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "libvirt's system daemon needs root"
    for tool in ("libvirtd", "virtlogd", "virsh", "unshare", "ip"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"{tool} is not installed (scripts/test.sh installs libvirt-daemon-system)"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--net", "--uts", "true"],
                           capture_output=True, text=True)  # fmt: skip
    if probe.returncode != 0:
        return f"cannot create namespaces: {probe.stderr.strip()}"
    return None


class LibvirtHost:
    """One libvirtd + virtlogd in private namespaces, rooted at ``root``."""

    def __init__(self, root: Path, hostname: str, *, qemu_conf: str = "",
                 libvirtd_conf: str = "") -> None:  # fmt: skip
        self.root = root
        self.hostname = hostname
        self.host_uuid = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"qmp-server-test-{hostname}"))
        self.sockdir = root / "sock"
        self.log = root / "libvirtd.log"
        self._qemu_conf = qemu_conf
        self._libvirtd_conf = libvirtd_conf
        self._holder: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.sockdir}/libvirt-sock"

    @property
    def pid(self) -> int:
        """The namespaces' first process (nsenter -t PID reaches them)."""
        assert self._holder is not None
        return self._holder.pid

    def _write_config(self) -> None:
        etc = self.root / "etc"
        shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True)
        # A container has no private mount namespace per domain and no unprivileged user the
        # venv's interpreter is readable by: run emulators as root without namespaces.
        (etc / "qemu.conf").write_text(
            'namespaces = [ ]\nuser = "root"\ngroup = "root"\nremember_owner = 0\n'
            'security_driver = "none"\n' + self._qemu_conf
        )
        (etc / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.sockdir}"\nhost_uuid = "{self.host_uuid}"\n'
            'log_filters = "1:qemu 1:libvirt 4:object 4:json 4:event 4:util 4:rpc 4:security"\n'
            f'log_outputs = "1:file:{self.log}"\n' + self._libvirtd_conf
        )
        (self.root / "hosts").write_text(
            f"127.0.0.1 localhost\n127.0.1.1 {self.hostname}\n"
        )

    def start(self, timeout: float = 180.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(exist_ok=True)
        self._write_config()
        # a fresh /run: the daemons' pid files (/run/libvirtd.pid, /run/virtlogd.pid) are
        # outside /run/libvirt, and two hosts must not share them
        mounts = [f"mount --bind {self.root}/etc /etc/libvirt", "mount -t tmpfs tmpfs /run"]
        for path in _PRIVATE[1:]:
            private = self.root / path.strip("/").replace("/", "_")
            private.mkdir(exist_ok=True)
            mounts.append(f"mkdir -p {path} && mount --bind {private} {path}")
        script = " && ".join([
            *mounts,
            f"mount --bind {self.root}/hosts /etc/hosts",
            f"hostname {self.hostname}",
            "ip link set lo up",
            "virtlogd -d",
            "libvirtd -d",
            # the first process of a pid namespace is its init: it must reap the daemons'
            # orphans (a -daemonize'd emulator), or libvirt waits on zombies it cannot kill
            f"exec {sys.executable} -c '{_REAPER}'",
        ])  # fmt: skip
        self._holder = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--mount",
             "--propagation", "private", "--uts", "--net", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._holder.poll() is not None:
                self._holder = None
                raise RuntimeError(f"libvirt host {self.hostname} exited early")
            if (self.sockdir / "libvirt-sock").exists():
                ok = self.virsh("list", "--all", check=False)
                if ok.returncode == 0:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"libvirtd of {self.hostname} did not answer within {timeout} s")

    def virsh(self, *args: str, check: bool = True, timeout: float = 120.0
              ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        result = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True,
                                text=True, timeout=timeout)  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"virsh {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def nsenter(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-n", "-u", "-p", *argv],
                              capture_output=True, text=True)  # fmt: skip

    def stop(self) -> None:
        if self._holder is None:
            return
        self._holder.send_signal(signal.SIGKILL)  # the pid namespace dies with its first process
        self._holder.wait()
        self._holder = None


def link_hosts(a: LibvirtHost, b: LibvirtHost, net: str = "10.77.0") -> tuple[str, str]:
    """Join two hosts' network namespaces with a veth pair; returns their addresses."""
    subprocess.run(["ip", "link", "add", "qsvA", "netns", str(a.pid), "type", "veth", "peer",
                    "name", "qsvB", "netns", str(b.pid)], check=True)  # fmt: skip
    addrs = (f"{net}.1", f"{net}.2")
    for host, dev, addr in ((a, "qsvA", addrs[0]), (b, "qsvB", addrs[1])):
        for cmd in (["ip", "addr", "add", f"{addr}/24", "dev", dev],
                    ["ip", "link", "set", dev, "up"]):  # fmt: skip
            r = subprocess.run(["nsenter", "-t", str(host.pid), "-n", *cmd], capture_output=True,
                               text=True)  # fmt: skip
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return addrs
