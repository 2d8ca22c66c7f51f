"""QEMU's human monitor (HMP) as a pure core: command line parsing, the command table and the
text formatters.  Commands run through the same QMP command layer (handlers, validation,
errors) as the QMP monitors; only the text around them is HMP's.  The socket adapter is
:mod:`qmp_server.runtime.hmp_monitor`; ``human-monitor-command`` is in
:mod:`qmp_server.commands.hmp`.
"""

from qmp_server.hmp.interpreter import HMPContext, HMPInterpreter, HMPResult
from qmp_server.hmp.readline import LineEditor

__all__ = ["HMPContext", "HMPInterpreter", "HMPResult", "LineEditor"]
