"""The ``qmp-server`` command line: QEMU's option syntax, so scripts that start QEMU start us.

QEMU options that shape what a QMP client sees are honoured (``-qmp``, ``-chardev``/``-mon``,
``-S``, ``-incoming``, ``-global migration.*``, ``-m``, ``-name``, ``-machine``); options that
mean nothing here are accepted and ignored (``-nodefaults``, ``-display``, ``-accel`` ...).
Errors are printed the way QEMU prints them, prefixed ``qmp-server:``, with exit status 1.
Options of our own use GNU long form: ``--compat``, ``--host``, ``--version``, ``--help``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from qmp_server import __version__
from qmp_server.engine.sizes import SIZE_HINT, parse_memory_size, parse_size
from qmp_server.engine.uri import uri_scheme_known
from qmp_server.errors import UsageError
from qmp_server.profiles import PROFILES, Profile, resolve_profile
from qmp_server.runtime.monitor import ChardevSpec

__all__ = ["Options", "main", "parse_args", "parse_chardev"]

PROG = "qmp-server"

#: QEMU options taking an argument that qmp-server accepts and ignores.
_IGNORED_WITH_ARG = frozenset(
    {
        "display", "vga", "accel", "serial", "parallel", "cpu", "smp", "object", "nic", "net",
        "drive", "bios", "boot", "rtc", "k", "L", "uuid", "msg", "d", "D", "trace", "sandbox",
        "overcommit", "audiodev", "vnc", "spice", "usbdevice", "blockdev", "netdev", "numa",
        "monitor", "chroot", "runas", "watchdog-action", "action", "pidfile",
    }
)  # fmt: skip
_IGNORED_FLAGS = frozenset(
    {
        "nodefaults", "enable-kvm", "no-shutdown", "no-reboot", "nographic", "snapshot",
        "no-user-config", "no-hpet", "no-acpi", "enable-fips", "full-screen", "s",
    }
)  # fmt: skip
_WITH_ARG = frozenset(
    {"qmp", "qmp-pretty", "chardev", "mon", "machine", "M", "m", "incoming", "global", "name",
     "device", "compat", "host", "http", "http-token-file", "http-cors", "poll-us",
     "guest-fill", "dirty-rate"}
) | _IGNORED_WITH_ARG  # fmt: skip

USAGE = f"""\
usage: {PROG} [options]
qmp-server {__version__}: a QMP server for the QEMU live-migration control plane.

QEMU-style options:
  -qmp unix:PATH[,server=on,wait=off]   a QMP monitor on a unix socket (repeatable);
                                        without server=on it connects out (qmp-shell-wrap)
  -qmp tcp:HOST:PORT[,server=on,wait=off]
  -chardev socket,id=ID,path=PATH|host=H,port=P,server=on,wait=off
  -mon chardev=ID,mode=control          a monitor on a -chardev
  -machine/-M none|pc|q35|...           accepted (the machine is modelled, not emulated)
  -m SIZE                               guest RAM size (default 128M; -M none: no RAM)
  -S                                    start paused (runstate prelaunch)
  -incoming defer|URI                   wait for an incoming migration
  -global migration.PROP=VALUE          migration property (capability or parameter)
  -device vfio-sim,id=ID[,initial-bytes=SIZE][,state-bytes=SIZE][,load-ms=N][,dirty-rate=SIZE]
                                        a device with precopy initial data (repeatable)
  -name NAME
  -nodefaults, -display none, -vga none, -accel tcg|kvm, -enable-kvm, ... accepted, ignored

qmp-server options:
  --compat VERSION   QEMU version to emulate: {", ".join(k for k in PROFILES if k != "default")}
                     (default: the precopy-initial-data patch, QEMU 8.0.50)
  --host KEY=VAL,... describe the emulated host (see docs/user-guide.md)
  --http [HOST:]PORT serve the REST mirror and dashboard (HOST defaults to 127.0.0.1)
  --http-token-file PATH   allow REST mutations with "Authorization: Bearer <token>"
  --http-cors ORIGIN[,ORIGIN...]   allow these browser origins (no CORS otherwise)
  --guest-fill idle|zero|random  guest RAM content at start (default idle: what an idle
                     SeaBIOS guest of the machine holds, as recorded from QEMU)
  --dirty-rate SIZE  bytes per second the guest workload dirties (default 0)
  --poll-us N        busy-poll sockets up to N microseconds after activity (default 0)
  --version          print the version and exit
  --help             print this help and exit
"""


@dataclass
class Options:
    """Everything the command line asked for."""

    profile: Profile
    monitors: list[ChardevSpec] = field(default_factory=list)
    start_paused: bool = False
    incoming: str | None = None
    globals: list[tuple[str, str, str]] = field(default_factory=list)
    #: ``-m``: None when not given (the machine's default: 128 MiB, none for ``-M none``)
    memory: int | None = None
    #: ``-nodefaults``: no default devices (their RAM blocks and ROMs are not registered)
    nodefaults: bool = False
    name: str | None = None
    machine: str | None = None
    devices: list[str] = field(default_factory=list)
    host: str | None = None
    #: ``--http [HOST:]PORT``: serve the REST mirror and dashboard (loopback by default).
    http: tuple[str, int] | None = None
    http_token_file: str | None = None
    http_cors: list[str] = field(default_factory=list)
    #: ``--poll-us N``: busy-poll sockets for up to N microseconds after activity (latency).
    poll_us: int = 0
    guest_fill: Literal["zero", "random", "idle"] = "idle"
    guest_seed: int = 1
    dirty_rate: int = 0


def _parse_onoff(key: str, value: str | None) -> bool:
    if value is None or value in ("on", "yes", "true", "y"):
        return True
    if value in ("off", "no", "false", "n"):
        return False
    raise UsageError(f"Parameter '{key}' expects 'on' or 'off'")


def parse_chardev(text: str, *, implicit_server: bool = False) -> tuple[str | None, ChardevSpec]:
    """Parse ``-qmp``/``-chardev`` backend text; returns (chardev id, spec)."""
    parts = text.split(",")
    head, opts = parts[0], parts[1:]
    kv: dict[str, str | None] = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        kv[key] = value if sep else None
    if head == "socket":
        path = kv.pop("path", None)
        host = kv.pop("host", None)
        port = kv.pop("port", None)
        if path:
            kind = "unix"
        elif port:
            kind = "tcp"
        else:
            raise UsageError("chardev: socket: 'host' and 'port' or 'path' required")
    elif head.startswith("unix:"):
        kind, path, host, port = "unix", head[5:], None, None
    elif head.startswith("tcp:"):
        kind, path = "tcp", None
        host, _, port = head[4:].rpartition(":")
    elif head == "stdio" or head.startswith("stdio"):
        raise UsageError(f"'{text}': stdio monitors are not supported; use a socket")
    else:
        raise UsageError(f"'{head}' is not a valid char driver")
    chardev_id = kv.pop("id", None)
    server = _parse_onoff("server", kv.pop("server", "off" if not implicit_server else "on"))
    wait_value = kv.pop("wait", None) if "wait" in kv else "on"
    nowait = "nowait" in kv
    kv.pop("nowait", None)
    wait = False if nowait else _parse_onoff("wait", wait_value)
    for ignored in ("telnet", "tls-creds", "reconnect", "logfile", "logappend", "mux", "ipv4",
                    "ipv6", "nodelay", "websocket", "abstract", "tight"):  # fmt: skip
        kv.pop(ignored, None)
    if kv:
        raise UsageError(f"Invalid parameter '{next(iter(kv))}'")
    if kind == "unix":
        if not path:
            raise UsageError("chardev: socket: 'path' required")
        return chardev_id, ChardevSpec("unix", path=path, server=server, wait=wait)
    try:
        port_number = int(port or "")
    except ValueError:
        raise UsageError(f"error parsing port in address '{host}:{port}'") from None
    return chardev_id, ChardevSpec(
        "tcp", host=host or "0.0.0.0", port=port_number, server=server, wait=wait
    )


def _parse_global(text: str) -> tuple[str, str, str]:
    name, sep, value = text.partition("=")
    driver, dot, prop = name.rpartition(".")
    if not sep:
        # QEMU first warns about the short-form boolean, then refuses it.
        raise UsageError(
            f"-global {text}: warning: short-form boolean option '{text}' deprecated\n"
            f"Please use {text}=on instead\n"
            f"{PROG}: -global {text}: Invalid parameter '{text}'"
        )
    if not dot or not driver or not prop:
        raise UsageError(f"-global {text}: Invalid parameter '{text}'")
    return driver, prop, value


_MACHINE = re.compile(r"(none|pc|q35|isapc|microvm|pc-(i440fx-|q35-)?\d+\.\d+)\Z")


def _check_machine(value: str, profile: Profile) -> str:
    first = value.split(",", 1)[0]
    kind = first[5:] if first.startswith("type=") else first
    if "=" in kind:  # only options, e.g. -machine accel=tcg
        return "pc"
    if not _MACHINE.match(kind):
        # 7.2 does not name the machine; 10.0 does (both recorded live)
        what = f': "{kind}"' if profile.since(10, 0) else ""
        raise UsageError(
            f"unsupported machine type{what}\nUse -machine help to list supported machines"
        )
    return kind


def _parse_int_option(option: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise UsageError(f"{option} {value}: expected an integer from {low} to {high}")
    return number


def _parse_http(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    return host, _parse_int_option("--http", port, 0, 65535)


def _parse_memory(value: str) -> int:
    try:
        return parse_memory_size(value)
    except ValueError as err:
        hint = f"\n{SIZE_HINT}" if "expects" in str(err) else ""
        raise UsageError(f"-m {value}: {err}{hint}") from None


def parse_args(argv: Sequence[str]) -> Options | None:
    """Parse a QEMU-style command line; None means "--help/--version was printed"."""
    raw: list[tuple[str, str | None]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            raise UsageError(f"{arg}: disk images are not supported (qmp-server models no drives)")
        name = arg.lstrip("-")
        value: str | None = None
        if "=" in name and arg.startswith("--"):
            name, value = name.split("=", 1)
        if name in ("help", "h"):
            sys.stdout.write(USAGE)
            return None
        if name == "version":
            sys.stdout.write(f"{PROG} {__version__}\n")
            return None
        if name in _WITH_ARG:
            if value is None:
                if i >= len(argv):
                    raise UsageError(f"{arg}: requires an argument")
                value = argv[i]
                i += 1
            raw.append((name, value))
        elif name in _IGNORED_FLAGS or name == "S":
            raw.append((name, None))
        else:
            raise UsageError(f"{arg}: invalid option")
    compat = [v for n, v in raw if n == "compat"]
    try:
        profile = resolve_profile(compat[-1] if compat else None)
    except ValueError as err:
        raise UsageError(str(err)) from None
    opts = Options(profile=profile)
    chardevs: dict[str, ChardevSpec] = {}
    for name, value in raw:
        assert value is not None or name in _IGNORED_FLAGS or name == "S"
        if name in ("qmp", "qmp-pretty"):
            assert value is not None
            opts.monitors.append(parse_chardev(value)[1])
        elif name == "chardev":
            assert value is not None
            cid, spec = parse_chardev(value)
            if cid is None:
                raise UsageError(f"-chardev {value}: chardev: no id specified")
            chardevs[cid] = spec
        elif name == "mon":
            assert value is not None
            fields = dict(p.partition("=")[::2] for p in value.split(","))
            cid = fields.get("chardev")
            if cid is None or cid not in chardevs:
                raise UsageError(f'-mon {value}: chardev "{cid}" not found')
            if fields.get("mode", "readline") != "control":
                continue  # an HMP monitor: not served
            opts.monitors.append(chardevs[cid])
        elif name == "S":
            opts.start_paused = True
        elif name == "nodefaults":
            opts.nodefaults = True
        elif name == "incoming":
            assert value is not None
            if value != "defer" and not uri_scheme_known(profile, value):
                raise UsageError(f"-incoming {value}: unknown migration protocol: {value}")
            opts.incoming = value
        elif name == "global":
            assert value is not None
            opts.globals.append(_parse_global(value))
        elif name == "m":
            assert value is not None
            opts.memory = _parse_memory(value)
        elif name == "name":
            opts.name = value
        elif name in ("machine", "M"):
            assert value is not None
            opts.machine = _check_machine(value, profile)
        elif name == "device":
            assert value is not None
            opts.devices.append(value)
        elif name == "host":
            opts.host = value
        elif name == "http":
            assert value is not None
            opts.http = _parse_http(value)
        elif name == "http-token-file":
            opts.http_token_file = value
        elif name == "http-cors":
            assert value is not None
            opts.http_cors.extend(o for o in value.split(",") if o)
        elif name == "poll-us":
            assert value is not None
            opts.poll_us = _parse_int_option("--poll-us", value, 0, 1_000_000)
        elif name == "guest-fill":
            if value not in ("zero", "random", "idle"):
                raise UsageError(f"--guest-fill {value}: expected 'idle', 'zero' or 'random'")
            opts.guest_fill = (
                "zero" if value == "zero" else "random" if value == "random" else "idle"
            )
        elif name == "dirty-rate":
            assert value is not None
            try:
                opts.dirty_rate = parse_size(value, "b", name="dirty-rate")
            except ValueError as err:
                raise UsageError(f"--dirty-rate {value}: {err}") from None
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qmp-server`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        options = parse_args(args)
        if options is None:
            return 0
        from qmp_server.runtime.runtime import Runtime

        runtime = Runtime(options)
    except UsageError as err:
        sys.stderr.write(f"{PROG}: {err}\n")
        return 1
    return runtime.run()


if __name__ == "__main__":
    sys.exit(main())
