"""Data recorded from real QEMUs and loaded at start-up (see tools/derive_machine_layouts.py)."""
