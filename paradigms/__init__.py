"""The built-in paradigm variants; importing this package registers them."""

import importlib

for _mod in ("text_conversion", "tool_agent", "guided_decoding", "trained_adapter"):
    try:
        importlib.import_module(f"paradigms.{_mod}")
    except ModuleNotFoundError as exc:  # a family still being written must not hide the others
        if exc.name != f"paradigms.{_mod}":
            raise
