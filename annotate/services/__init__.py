"""Writes of the human side, one module per concept."""
