"""qapi layer."""
