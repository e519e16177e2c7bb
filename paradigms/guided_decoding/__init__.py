"""Guided decoding: an image–text scorer steers the LLM's token choices (MAGIC, ZeroCap)."""

import importlib

for _mod in ("magic", "zerocap"):  # each registers its variant on import
    try:
        importlib.import_module(f"paradigms.guided_decoding.{_mod}")
    except ModuleNotFoundError as exc:  # a variant still being written must not hide the other
        if exc.name != f"paradigms.guided_decoding.{_mod}":
            raise
