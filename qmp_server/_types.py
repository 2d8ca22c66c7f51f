"""JSON aliases shared by every layer.

Values decoded from the QMP wire follow QEMU's QObject model: ``dict`` (QDict), ``list``
(QList), ``str`` (QString), ``bool`` (QBool), ``None`` (QNull), ``int`` for integers that fit
int64 or uint64 (QNum I64/U64), and ``float`` for every other number (QNum double).
"""

from typing import Any, TypeAlias

JSONValue: TypeAlias = Any
JSONObject: TypeAlias = dict[str, Any]

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
