"""Text-conversion paradigm: the image becomes text in the LLM's prompt (PICa, PromptCap)."""

from paradigms.text_conversion import pica, promptcap  # noqa: F401  (registers the variants)
