"""Command layer: QMP command handlers shared by every monitor and the REST mirror."""
