"""Reads of the machine side, one module per concept."""
