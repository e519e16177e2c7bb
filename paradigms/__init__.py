"""The built-in paradigm variants; importing this package registers them.

One subpackage per family in :data:`harness.registry.FAMILIES`; each imports its variant modules.
"""

import importlib

from harness.registry import FAMILIES

for _family in FAMILIES:
    importlib.import_module(f"paradigms.{_family}")
