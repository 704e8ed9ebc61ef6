"""Engine tests share the model fixtures of tests/conftest.py (the packaged SmolLM2 and a tiny
random Llama with its tokenizer); nothing here needs Django."""
