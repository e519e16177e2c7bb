"""Guided decoding: an image–text scorer steers the LLM's token choices (MAGIC, ZeroCap)."""

import importlib

for _mod in ("magic", "zerocap"):  # each registers its variant on import
    importlib.import_module(f"paradigms.guided_decoding.{_mod}")
