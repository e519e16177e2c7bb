"""Text-conversion paradigm: the image becomes text in the LLM's prompt (PICa, PromptCap, ScienceQA)."""

from paradigms.text_conversion import pica, promptcap, scienceqa  # noqa: F401  (registers the variants)
