"""Writes of the machine side, one module per concept; the worker bodies are in alignment.workers."""
