"""What a probing client (libvirt's capability probe) asks about the emulator itself.

Types, device and QOM properties, machine types, CPU models and their expansion, command-line
options, TPM models: answered from the recording of the real QEMU behind the profile
(:mod:`qmp_server.engine.object_model`, loaded on the first of these commands).  ``query-kvm``
is this host's: KVM is present when ``/dev/kvm`` exists and enabled when the command line
asked for it (``-accel kvm``, ``-enable-kvm``, ``-machine accel=kvm``) ahead of TCG.
Answers that depend on the accelerator (SEV, SGX, CPU definitions and expansions) are the
recorded QEMU's under TCG, or under KVM when KVM is enabled.  A ``qom-list-types`` loads
QEMU's modules, which in QEMU 7.2 adds ``spice`` to ``query-command-line-options``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from qmp_server.commands.registry import command
from qmp_server.engine.object_model import object_model

if TYPE_CHECKING:
    from qmp_server.engine.vm import VirtualMachine

#: Where KVM lives on a Linux host.
KVM_DEVICE = "/dev/kvm"


def kvm_enabled(accel: tuple[str, ...], present: bool) -> bool:
    """QEMU takes the first accelerator of the list that works; TCG always works."""
    for name in accel:
        if name == "kvm" and present:
            return True
        if name == "tcg":
            return False
    return False


@command("query-target")
def query_target(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return object_model(vm.profile).reply("query-target")


def _kvm(vm: VirtualMachine) -> bool:
    return kvm_enabled(vm.accel, os.path.exists(KVM_DEVICE))


@command("query-kvm")
def query_kvm(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    present = os.path.exists(KVM_DEVICE)
    return {"enabled": kvm_enabled(vm.accel, present), "present": present}


@command("qom-list-types")
def qom_list_types(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    model = object_model(vm.profile)
    vm.qom_modules_loaded = True  # QEMU loads its modules to list the types
    return model.qom_list_types(args.get("implements"), bool(args.get("abstract", False)))


@command("device-list-properties")
def device_list_properties(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return object_model(vm.profile).device_list_properties(args["typename"])


@command("qom-list-properties")
def qom_list_properties(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return object_model(vm.profile).qom_list_properties(args["typename"])


@command("query-machines")
def query_machines(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return object_model(vm.profile).query_machines(args)


@command("query-cpu-definitions")
def query_cpu_definitions(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return object_model(vm.profile).reply("query-cpu-definitions", kvm=_kvm(vm))


@command("query-cpu-model-expansion")
def query_cpu_model_expansion(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    model = object_model(vm.profile)
    return model.cpu_model_expansion(args["type"], args["model"], kvm=_kvm(vm))


@command("query-tpm-models")
def query_tpm_models(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return object_model(vm.profile).reply("query-tpm-models")


@command("query-tpm-types")
def query_tpm_types(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return object_model(vm.profile).reply("query-tpm-types")


@command("query-command-line-options")
def query_command_line_options(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    model = object_model(vm.profile)
    return model.command_line_options(args.get("option"), loaded=vm.qom_modules_loaded)


@command("query-sev-capabilities")
def query_sev_capabilities(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return object_model(vm.profile).reply("query-sev-capabilities", kvm=_kvm(vm))


@command("query-sgx-capabilities")
def query_sgx_capabilities(vm: VirtualMachine, args: dict[str, Any]) -> Any:
    return object_model(vm.profile).reply("query-sgx-capabilities", kvm=_kvm(vm))
