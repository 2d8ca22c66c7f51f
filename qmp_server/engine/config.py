"""The migration configuration of one VM: its capabilities and parameters.

Contract: one mutable object per :class:`~qmp_server.engine.vm.VirtualMachine` (the lead
attaches it as ``vm.config``).  Every change is all-or-nothing: a refused call raises
:class:`~qmp_server.errors.CommandError` with QEMU's text and leaves the state untouched.
Neighbours: :mod:`~qmp_server.engine.capabilities` and :mod:`~qmp_server.engine.parameters`
(the rules), :mod:`~qmp_server.engine.properties` (``-global`` presets),
:mod:`qmp_server.commands.migration_config` (the QMP handlers).

Rule: whether a migration is running is the caller's business (the command layer refuses
migrate-set-capabilities then); this object only knows the values and the rules.

>>> from qmp_server.profiles import PROFILES
>>> cfg = MigrationConfig.from_globals(PROFILES["8.1"], HostInfo(), [])
>>> cfg.set_capabilities([{"capability": "switchover-ack", "state": True}])
Traceback (most recent call last):
...
qmp_server.errors.CommandError: Capability 'switchover-ack' requires capability 'return-path'
>>> cfg.enabled("switchover-ack")
False
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from qmp_server.engine.capabilities import CapsContext, capability_names, check_capabilities
from qmp_server.engine.host import DEFAULT_HOST, HostInfo
from qmp_server.engine.object_model import data_version, type_names
from qmp_server.engine.parameters import check_parameters, merge_request, query_view
from qmp_server.engine.properties import apply_globals
from qmp_server.errors import CommandError
from qmp_server.profiles import Profile
from qmp_server.wire.encoder import Encoded

__all__ = ["MigrationConfig"]


class MigrationConfig:
    """Capabilities and parameters of one VM, with QEMU's checks on every change."""

    def __init__(
        self,
        profile: Profile,
        host: HostInfo = DEFAULT_HOST,
        capabilities: Mapping[str, bool] | None = None,
        parameters: Mapping[str, Any] | None = None,
        others: Mapping[str, Any] | None = None,
    ) -> None:
        result = apply_globals(profile, host, [])
        self.profile = profile
        self.host = host
        self._initial_caps = dict(result.capabilities)
        self._initial_params = copy.deepcopy(result.parameters)
        self._initial_others = dict(result.others)
        if capabilities is not None:
            self._initial_caps.update(capabilities)
        if parameters is not None:
            self._initial_params.update(copy.deepcopy(dict(parameters)))
        if others is not None:
            self._initial_others.update(others)
        #: The non-parameter ``-global`` properties (store-global-state, ...).
        self.others: dict[str, Any] = dict(self._initial_others)
        #: Warnings the ``-global`` options produced (the CLI prints them).
        self.warnings: list[str] = []
        #: URI of the last migrate-incoming attempt / ``-incoming URI`` (see CapsContext).
        self.incoming_uri: str | None = None
        #: True while the destination's incoming transport exists (8.1+ rules).
        self.incoming_started = False
        self._caps: dict[str, bool] = {}
        #: the last query-migrate-capabilities answer and the capabilities it was built
        #: from (every change replaces ``_caps``): monitors poll it, often
        self._caps_answer: tuple[dict[str, bool], Encoded] | None = None
        self._params: dict[str, Any] = {}
        self.reset()

    @classmethod
    def from_globals(
        cls,
        profile: Profile,
        host: HostInfo,
        globals: Iterable[tuple[str, str, str]],
        *,
        incoming: str | None = None,
    ) -> MigrationConfig:
        """Build from ``-global`` triples ``(driver, property, value)``.

        :param incoming: the ``-incoming`` argument (makes the start-up check a destination's).
        :raise UsageError: exactly as QEMU refuses to start (see :mod:`.properties`).
        """
        result = apply_globals(
            profile, host, globals, incoming=incoming,
            known_class=lambda name: name in type_names(data_version(profile)),
        )  # fmt: skip
        cfg = cls(profile, host, result.capabilities, result.parameters, result.others)
        cfg.warnings = list(result.warnings)
        return cfg

    # -- capabilities --------------------------------------------------------------------

    @property
    def capabilities(self) -> dict[str, bool]:
        """A copy of every capability in enum order."""
        return dict(self._caps)

    def enabled(self, name: str) -> bool:
        """True when capability ``name`` is on (an unknown name is off)."""
        return self._caps.get(name, False)

    def query_capabilities(self) -> Encoded:
        """``query-migrate-capabilities``: every capability in enum order.

        ``block`` is left out on a build without live block migration, as QEMU does.  The
        answer, and its QMP text, are made once per state of the capabilities (a fleet's
        orchestrator polls them): ``.value`` is the list, which callers must not change.
        """
        cached = self._caps_answer
        if cached is not None and cached[0] is self._caps:
            return cached[1]
        answer = Encoded([
            {"capability": name, "state": state}
            for name, state in self._caps.items()
            if name != "block" or self.host.live_block_migration
        ])  # fmt: skip
        self._caps_answer = (self._caps, answer)
        return answer

    def caps_context(self, *, inmigrate: bool = False) -> CapsContext:
        """The rule context from this object's own state plus the caller's runstate."""
        return CapsContext(
            inmigrate=inmigrate,
            incoming_uri=self.incoming_uri,
            incoming_started=self.incoming_started,
            multifd_compression=str(self._params.get("multifd-compression", "none")),
            tls_creds=str(self._params.get("tls-creds", "")),
        )

    def check_capabilities(
        self, entries: Iterable[Mapping[str, Any]], ctx: CapsContext | None = None
    ) -> tuple[dict[str, bool], str | None]:
        """Merge ``entries`` into a copy and check it: ``(merged, error_or_None)``."""
        merged = dict(self._caps)
        for entry in entries:  # in order: a later duplicate wins
            merged[str(entry["capability"])] = bool(entry["state"])
        base = ctx or CapsContext()
        ctx = replace(
            base,
            multifd_compression=str(self._params.get("multifd-compression", "none")),
            tls_creds=str(self._params.get("tls-creds", "")),
        )
        return merged, check_capabilities(self.profile, self.host, self._caps, merged, ctx)

    def set_capabilities(
        self, entries: Iterable[Mapping[str, Any]], ctx: CapsContext | None = None
    ) -> None:
        """``migrate-set-capabilities`` minus the in-progress check (the caller's job).

        :param entries: ``{"capability": name, "state": bool}`` items, applied in order.
        :param ctx: runstate and incoming facts; the parameter fields are taken from this
            object, whatever ``ctx`` says.
        :raise CommandError: with QEMU's text; nothing is changed then.
        """
        merged, err = self.check_capabilities(entries, ctx)
        if err is not None:
            raise CommandError(err)
        self._caps = merged

    # -- parameters ----------------------------------------------------------------------

    @property
    def parameters(self) -> dict[str, Any]:
        """A deep copy of every stored parameter (block-bitmap-mapping only once set)."""
        return copy.deepcopy(self._params)

    def parameter(self, name: str) -> Any:
        """The stored value of parameter ``name`` (KeyError when unset/unknown)."""
        return copy.deepcopy(self._params[name])

    def query_parameters(self) -> dict[str, Any]:
        """``query-migrate-parameters``: schema order, block-bitmap-mapping once set."""
        return copy.deepcopy(query_view(self.profile, self._params))

    def set_parameters(self, request: Mapping[str, Any]) -> None:
        """``migrate-set-parameters``: check current+request, then apply all or nothing.

        :raise CommandError: with QEMU's text; nothing is changed then.
        """
        err = check_parameters(self.profile, self._params, request, self._caps)
        if err is not None:
            raise CommandError(err)
        self._params = copy.deepcopy(merge_request(self.profile, self._params, request))

    # -- lifecycle -----------------------------------------------------------------------

    def note_incoming(self, uri: str | None, *, started: bool) -> None:
        """Record a migrate-incoming attempt (``uri``) and whether its transport exists."""
        self.incoming_uri = uri
        self.incoming_started = started

    def reset(self) -> None:
        """Back to the start-up state (the ``-global`` presets, not QEMU's defaults)."""
        names = capability_names(self.profile)
        self._caps = {n: bool(self._initial_caps.get(n, False)) for n in names}
        self._params = copy.deepcopy(self._initial_params)
        self.others = dict(self._initial_others)
        self.incoming_uri = None
        self.incoming_started = False
