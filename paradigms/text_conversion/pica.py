"""PICa (Yang et al., 2022): the image as text (tags, objects, OCR; a caption where a captioner is
configured) in PICa's prompt, in-context examples, an m-prompt ensemble won by log-probability."""

from __future__ import annotations

from harness.registry import register_paradigm
from paradigms.text_conversion.base import TextConversionOptions, TextConversionParadigm


class PicaOptions(TextConversionOptions):
    """PICa's settings; see :class:`TextConversionOptions`."""


@register_paradigm
class Pica(TextConversionParadigm):
    variant = "pica"
    description = (
        "PICa: converted image text (objects, ImageNet tags, OCR, faces; or a captioner) as Context in "
        "PICa's Q/A prompt with in-context examples; ensemble of prompts, highest log-prob answer wins."
    )
    Options = PicaOptions
    uses = ("llm", "tools")
