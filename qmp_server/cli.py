"""The ``qmp-server`` command line: QEMU's option syntax, so scripts that start QEMU start us.

QEMU options that shape what a QMP client sees are honoured (``-qmp``, ``-chardev``/``-mon``,
``-S``, ``-incoming``, ``-global migration.*``, ``-m``, ``-name``, ``-machine``); options that
mean nothing here are accepted and ignored (``-nodefaults``, ``-display``, ``-accel`` ...).
What launchers need to start a QEMU is there too: ``-M help``/``-cpu help``/``-version`` print
the emulated QEMU's texts, ``-chardev socket,fd=N`` takes over an inherited socket,
``-daemonize`` and ``-pidfile`` behave as in QEMU (issue 13).
Errors are printed the way QEMU prints them, prefixed ``qmp-server:``, with exit status 1.
Options of our own use GNU long form: ``--compat``, ``--host``, ``--version``, ``--help``.
"""

from __future__ import annotations

import fcntl
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING

from qmp_server import __version__
from qmp_server.chardev_options import check_monitor_chardev, parse_chardev
from qmp_server.engine.identity import parse_name, parse_uuid, split_opts
from qmp_server.engine.sizes import SIZE_HINT, parse_memory_size, parse_size
from qmp_server.engine.topology import parse_smp
from qmp_server.engine.uri import uri_scheme_known
from qmp_server.errors import CommandError, UsageError
from qmp_server.profiles import PROFILES, Profile, resolve_profile
from qmp_server.runtime.monitor import ChardevSpec

if TYPE_CHECKING:  # numpy stays unloaded until the guest is built
    from qmp_server.engine.guest import Fill

__all__ = ["Options", "main", "parse_args", "parse_chardev"]

PROG = "qmp-server"

#: QEMU options taking an argument that qmp-server accepts and ignores.
_IGNORED_WITH_ARG = frozenset(
    {
        "display", "vga", "accel", "serial", "parallel", "cpu", "smp", "object", "nic", "net",
        "drive", "bios", "boot", "rtc", "k", "L", "msg", "d", "D", "trace", "sandbox",
        "overcommit", "audiodev", "vnc", "spice", "usbdevice", "blockdev", "netdev", "numa",
        "chroot", "runas", "watchdog-action", "action", "smbios", "iscsi", "fw_cfg",
        "set", "icount", "mem-path", "acpitable", "device-tree", "semihosting-config",
    }
)  # fmt: skip
_IGNORED_FLAGS = frozenset(
    {
        "nodefaults", "enable-kvm", "no-shutdown", "no-reboot", "nographic", "snapshot",
        "no-user-config", "no-hpet", "no-acpi", "enable-fips", "full-screen", "s", "daemonize",
    }
)  # fmt: skip
_WITH_ARG = frozenset(
    {"qmp", "qmp-pretty", "chardev", "mon", "machine", "M", "m", "incoming", "global", "name",
     "device", "compat", "host", "http", "http-token-file", "http-cors", "poll-us",
     "guest-fill", "dirty-rate", "dirty-write-bytes",
     "dirty-working-set", "pidfile", "uuid", "add-fd", "monitor"}
) | _IGNORED_WITH_ARG  # fmt: skip

USAGE = f"""\
usage: {PROG} [options]
qmp-server {__version__}: a QMP server for the QEMU live-migration control plane.

QEMU-style options:
  -qmp unix:PATH[,server=on,wait=off]   a QMP monitor on a unix socket (repeatable);
                                        without server=on it connects out (qmp-shell-wrap)
  -qmp tcp:HOST:PORT[,server=on,wait=off]
  -chardev socket,id=ID,path=PATH|host=H,port=P,server=on,wait=off
  -chardev socket,id=ID,fd=N[,server=on]  an inherited socket: a connected one is the
                                        monitor's client, a listening one (server=on)
                                        is listened on
  -mon chardev=ID,mode=control          a monitor on a -chardev
  -monitor unix:PATH,server=on,wait=off  a human monitor (HMP; also tcp:, and
  -mon chardev=ID[,mode=readline])      -mon in readline mode); see docs/hmp.md
  -machine/-M none|pc|q35|...           accepted (the machine is modelled, not emulated)
  -machine help, -cpu help, -accel help the emulated QEMU's lists, then exit
  -daemonize                            run in the background; return once monitors listen
  -pidfile PATH                         write the process id to PATH (locked, removed at exit)
  -version                              the emulated QEMU's version text, then exit
  -m SIZE                               guest RAM size (default 128M; -M none: no RAM)
  -S                                    start paused (runstate prelaunch)
  -incoming defer|URI                   wait for an incoming migration
  -global migration.PROP=VALUE          migration property (capability or parameter)
  -device vfio-sim,id=ID[,initial-bytes=SIZE][,state-bytes=SIZE][,load-ms=N][,dirty-rate=SIZE]
                                        a device with precopy initial data (repeatable)
  -device virtio-balloon-pci[,id=ID]    the memory balloon (balloon, query-balloon)
  -name [guest=]NAME[,debug-threads=on|off][,process=NAME]   query-name
  -uuid UUID                            query-uuid, info uuid (default all zero)
  -add-fd fd=N,set=S[,opaque=TEXT]      put inherited fd N in fd set S (query-fdsets)
  -no-shutdown, -no-reboot, -no-acpi    as in QEMU: a shutdown stops the VM, a reset shuts
                                        down, the power button is ignored
  -nodefaults, -display none, -vga none, -accel tcg|kvm, -enable-kvm, ... accepted, ignored

qmp-server options:
  --compat VERSION   QEMU version to emulate: {", ".join(k for k in PROFILES if k != "default")}
                     (default: the precopy-initial-data patch, QEMU 8.0.50)
  --host KEY=VAL,... describe the emulated host (see docs/user-guide.md)
  --http [HOST:]PORT serve the REST mirror and dashboard (HOST defaults to 127.0.0.1)
  --http-token-file PATH   allow REST mutations with "Authorization: Bearer <token>"
  --http-cors ORIGIN[,ORIGIN...]   allow these browser origins (no CORS otherwise)
  --guest-fill idle|zero|random|text  guest RAM content at start (default idle: what an
                     idle SeaBIOS guest of the machine holds, as recorded from QEMU; text:
                     distinct log-like pages that compress to about a third)
  --dirty-rate SIZE  bytes per second the guest workload dirties (default 0)
  --dirty-write-bytes SIZE  bytes each guest write changes in a page (default 4096: all)
  --dirty-working-set SIZE  the guest writes within this much of its RAM (default: all)
  --poll-us N        busy-poll sockets up to N microseconds after activity (default 0)
  --version          print the version and exit
  --help             print this help and exit
"""


@dataclass
class Options:
    """Everything the command line asked for."""

    profile: Profile
    monitors: list[ChardevSpec] = field(default_factory=list)
    #: ``-monitor`` / ``-mon mode=readline``: human monitors (HMP)
    hmp_monitors: list[ChardevSpec] = field(default_factory=list)
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
    guest_fill: Fill = "idle"
    guest_seed: int = 1
    dirty_rate: int = 0
    #: bytes each write of the workload changes in its page (XBZRLE's case: a few)
    dirty_write_bytes: int = 4096
    #: how much of RAM the workload writes to (0: all of it)
    dirty_working_set: int = 0
    #: ``-daemonize``: fork; the parent returns once the monitors listen
    daemonize: bool = False
    #: ``-pidfile PATH``
    pidfile: str | None = None
    #: accelerators in the order QEMU tries them (``-accel``, ``-enable-kvm``,
    #: ``-machine accel=A:B``); empty: QEMU's default (TCG)
    accel: list[str] = field(default_factory=list)
    #: ``-smp``: the last value given (None: one vCPU)
    smp: str | None = None
    #: ``-object`` values, in order (``iothread`` objects get a thread each)
    objects: list[str] = field(default_factory=list)
    #: the chardev label of each of ``monitors`` (``compat_monitorN`` for ``-qmp``)
    monitor_labels: list[str] = field(default_factory=list)
    #: ``-chardev``s no monitor uses (serial consoles, guest-agent sockets ...), by id
    guest_chardevs: dict[str, ChardevSpec] = field(default_factory=dict)
    #: every chardev label in the order QEMU creates them (the command line's)
    chardev_order: list[str] = field(default_factory=list)
    #: ``-name ...,debug-threads=on``: vCPU and I/O threads carry QEMU's names
    debug_threads: bool = False
    #: ``-uuid`` (lower case), ``-add-fd`` (fd, set, opaque), power options
    uuid: str | None = None
    add_fds: list[tuple[int, int, str | None]] = field(default_factory=list)
    no_shutdown: bool = False
    no_reboot: bool = False
    #: ``-no-acpi`` or ``-machine ...,acpi=off``
    no_acpi: bool = False


def help_text(profile: Profile, name: str) -> str:
    """A text recorded from the emulated QEMU (``tools/record_help_texts.py``).

    ``name`` is ``machine``, ``cpu``, ``accel`` or ``version``; profiles without recordings of
    their own (the default 8.0.50 and 8.1) print QEMU 7.2's.
    """
    folder = "qemu-10.0" if profile.since(10, 0) else "qemu-7.2"
    data = resources.files("qmp_server.data").joinpath("help", folder, f"{name}.txt")
    return data.read_text(encoding="utf-8")


def version_text(profile: Profile) -> str:
    """``-version``: QEMU's two lines, the first naming the emulated version (launchers parse
    it), the package in parentheses; the copyright line is the recorded QEMU's."""
    major, minor, micro = profile.version
    copyright_line = help_text(profile, "version").splitlines()[1]
    first = f"QEMU emulator version {major}.{minor}.{micro} ({PROG} {__version__})"
    return f"{first}\n{copyright_line}\n"


def _device_help(profile: Profile, value: str) -> None:
    """``-device help`` / ``-device DRIVER,help``: the emulated QEMU's text; an unknown driver
    is reported on stderr and, as in QEMU, the exit status is still 0."""
    from qmp_server.engine.object_model import object_model  # loads its data on use

    driver = value.split(",", 1)[0]
    try:
        sys.stdout.write(object_model(profile).device_help(None if _is_help(driver) else driver))
    except CommandError as err:
        sys.stderr.write(f"{PROG}: -device {value}: {err.desc}\n")


def _is_help(value: str) -> bool:
    return any(part in ("help", "?") for part in value.split(","))


def _machine_type_given(value: str) -> bool:
    """Whether a ``-machine`` value names the type (its first part, or ``type=``)."""
    parts = value.split(",")
    return (parts[0] not in ("help", "?") and "=" not in parts[0]) or any(
        part.startswith("type=") for part in parts
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


def _parse_add_fd(value: str) -> tuple[int, int, str | None]:
    """``-add-fd fd=N,set=S[,opaque=TEXT]`` with QEMU's checks and texts, in its order."""
    fields: dict[str, str] = {}
    for key, item in split_opts(value, None):
        if key not in ("fd", "set", "opaque"):
            raise UsageError(f"-add-fd {value}: Invalid parameter '{key}'")
        fields[key] = item

    def number(key: str) -> int:
        try:
            return int(fields.get(key, "-1"), 0)
        except ValueError:
            return -1

    fd, fdset = number("fd"), number("set")
    if fd < 0:
        raise UsageError(f"-add-fd {value}: fd option is required and must be non-negative")
    if fd <= 2:
        raise UsageError(f"-add-fd {value}: fd cannot be a standard I/O stream")
    if fdset < 0:
        raise UsageError(f"-add-fd {value}: set option is required and must be non-negative")
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        raise UsageError(f"-add-fd {value}: fd is not valid or already in use") from None
    return fd, fdset, fields.get("opaque")


def _size_option(name: str, value: str | None, low: int = 0, high: int | None = None) -> int:
    """``--NAME SIZE`` (QEMU's size suffixes, bytes by default), within ``low``..``high``."""
    assert value is not None
    try:
        size = parse_size(value, "b", name=name)
    except ValueError as err:
        raise UsageError(f"--{name} {value}: {err}") from None
    if size < low or (high is not None and size > high):
        raise UsageError(f"--{name} {value}: expected {low} to {high} bytes")
    return size


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


def _compat_profile(argv: Sequence[str]) -> Profile:
    """The profile named by ``--compat`` anywhere on the line (for ``-version``)."""
    name = None
    for i, arg in enumerate(argv):
        if arg == "--compat" and i + 1 < len(argv):
            name = argv[i + 1]
        elif arg.startswith("--compat="):
            name = arg.partition("=")[2]
    try:
        return resolve_profile(name)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _check_daemonize(raw: list[tuple[str, str | None]]) -> None:
    """QEMU's start-up refusals of ``-daemonize`` with output that needs the terminal."""
    if not any(n == "daemonize" for n, _ in raw):
        return
    for name, value in raw:
        if name in ("chardev", "qmp", "qmp-pretty") and value and value.startswith("stdio"):
            raise UsageError(f"-{name} {value}: cannot use stdio with -daemonize")
    # -nographic would put a monitor on stdio unless another monitor (or none) is asked for
    monitors = {"qmp", "qmp-pretty", "mon", "monitor", "nodefaults"}
    if any(n == "nographic" for n, _ in raw) and not any(n in monitors for n, _ in raw):
        raise UsageError("-nographic cannot be used with -daemonize")


def parse_args(argv: Sequence[str]) -> Options | None:
    """Parse a QEMU-style command line; None means a help or version text was printed."""
    raw: list[tuple[str, str | None]] = []
    machine_type = False
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
        if name == "version" and arg == "-version":  # QEMU's: the emulated version
            sys.stdout.write(version_text(_compat_profile(argv)))
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
            if name in ("machine", "M"):
                # QEMU acts on -M help as it reads it: the machine list while no type is
                # known yet; with a type, that machine's properties (not recorded here).
                if _is_help(value) and (machine_type or _machine_type_given(value)):
                    raise UsageError(f"-{name} {value}: machine property help is not available")
                if _is_help(value):
                    sys.stdout.write(help_text(_compat_profile(argv), "machine"))
                    return None
                machine_type = machine_type or _machine_type_given(value)
        elif name == "no-acpi" and _compat_profile(argv).since(9, 0):
            # deprecated in 8.0, gone in 9.0: 10.0 refuses it (recorded); -machine acpi=off
            raise UsageError(f"{arg}: invalid option")
        elif name in _IGNORED_FLAGS or name == "S":
            raw.append((name, None))
        else:
            raise UsageError(f"{arg}: invalid option")
    compat = [v for n, v in raw if n == "compat"]
    try:
        profile = resolve_profile(compat[-1] if compat else None)
    except ValueError as err:
        raise UsageError(str(err)) from None
    for option in ("cpu", "accel"):
        if any(n == option and v in ("help", "?") for n, v in raw):
            sys.stdout.write(help_text(profile, option))
            return None
    for name, value in raw:
        if name == "device" and value and not value.startswith("{") and _is_help(value):
            _device_help(profile, value)
            return None
    _check_daemonize(raw)
    opts = Options(profile=profile)
    chardevs: dict[str, ChardevSpec] = {}
    compat_monitors = 0
    used: set[str] = set()
    for name, value in raw:
        assert value is not None or name in _IGNORED_FLAGS or name == "S"
        if name in ("qmp", "qmp-pretty"):
            assert value is not None
            opts.monitors.append(parse_chardev(value)[1])
            opts.monitor_labels.append(f"compat_monitor{compat_monitors}")
            opts.chardev_order.append(f"compat_monitor{compat_monitors}")
            compat_monitors += 1
        elif name == "chardev":
            assert value is not None
            cid, spec = parse_chardev(value)
            if cid is None:
                raise UsageError(f"-chardev {value}: chardev: no id specified")
            chardevs[cid] = spec
            opts.chardev_order.append(cid)
        elif name == "mon":
            assert value is not None
            fields = dict(p.partition("=")[::2] for p in value.split(","))
            cid = fields.get("chardev")
            if cid is None or cid not in chardevs:
                raise UsageError(f'-mon {value}: chardev "{cid}" not found')
            check_monitor_chardev(value, chardevs[cid])
            used.add(cid)
            if fields.get("mode", "readline") != "control":
                opts.hmp_monitors.append(chardevs[cid])  # a human monitor (HMP)
                continue
            opts.monitors.append(chardevs[cid])
            opts.monitor_labels.append(cid)
        elif name == "monitor":
            assert value is not None
            if value not in ("none", "stdio", "vc") and not value.startswith("vc:"):
                opts.hmp_monitors.append(parse_chardev(value)[1])
        elif name == "S":
            opts.start_paused = True
        elif name == "daemonize":
            opts.daemonize = True
        elif name == "pidfile":
            opts.pidfile = value
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
            assert value is not None
            try:
                opts.name = parse_name(value)
            except ValueError as err:
                raise UsageError(f"-name {value}: {err}") from None
            opts.debug_threads = any(
                key == "debug-threads" and val in ("on", "yes", "true", "y", "")
                for key, val in split_opts(value, "guest")
            )
        elif name == "uuid":
            assert value is not None
            try:
                opts.uuid = parse_uuid(value)
            except ValueError as err:
                raise UsageError(f"-uuid {value}: {err}") from None
        elif name == "add-fd":
            assert value is not None
            opts.add_fds.append(_parse_add_fd(value))
        elif name in ("no-shutdown", "no-reboot", "no-acpi"):
            setattr(opts, name.replace("-", "_"), True)
        elif name in ("machine", "M"):
            assert value is not None
            opts.machine = _check_machine(value, profile)
            for part in value.split(","):
                if part.startswith("accel="):
                    opts.accel = part[len("accel=") :].split(":")
            if "acpi=off" in value.split(","):
                opts.no_acpi = True
        elif name == "accel":
            assert value is not None
            opts.accel.append(value.split(",", 1)[0])
        elif name == "enable-kvm":
            opts.accel = ["kvm"]
        elif name == "device":
            assert value is not None
            opts.devices.append(value)
        elif name == "smp":
            assert value is not None
            try:
                parse_smp(value)
            except ValueError as err:
                raise UsageError(f"-smp {value}: {err}") from None
            opts.smp = value
        elif name == "object":
            assert value is not None
            opts.objects.append(value)
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
            fills: dict[str | None, Fill] = {
                "zero": "zero", "random": "random", "idle": "idle", "text": "text"
            }  # fmt: skip
            if value not in fills:
                raise UsageError(
                    f"--guest-fill {value}: expected 'idle', 'zero', 'random' or 'text'"
                )
            opts.guest_fill = fills[value]
        elif name == "dirty-rate":
            opts.dirty_rate = _size_option(name, value)
        elif name == "dirty-write-bytes":
            opts.dirty_write_bytes = _size_option(name, value, 1, 4096)
        elif name == "dirty-working-set":
            opts.dirty_working_set = _size_option(name, value)
    opts.guest_chardevs = {cid: spec for cid, spec in chardevs.items() if cid not in used}
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qmp-server`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    from qmp_server.fleet.cli import is_fleet_command_line

    if is_fleet_command_line(args):
        return _fleet_main(args)
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


def _fleet_main(args: list[str]) -> int:
    """``qmp-server --fleet FILE`` / ``--fleet-size N``: many VMs in this process."""
    from qmp_server.fleet.cli import parse_fleet_command_line

    try:
        line = parse_fleet_command_line(args)
        options = parse_args(list(line.process_args))
        assert options is not None  # process options print no help
        from qmp_server.runtime.fleet import Fleet

        fleet = Fleet(
            line.spec,
            options,
            link_bandwidth=line.link_bandwidth,
            link_latency=line.link_latency,
        )
    except UsageError as err:
        sys.stderr.write(f"{PROG}: {err}\n")
        return 1
    return fleet.run()


if __name__ == "__main__":
    sys.exit(main())
