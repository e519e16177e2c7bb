"""The built-in paradigm variants; importing this package registers them."""

import importlib

for _mod in ("text_conversion", "tool_agent", "guided_decoding", "trained_adapter"):
    importlib.import_module(f"paradigms.{_mod}")
