"""Trained-adapter paradigm: a frozen LLM reads images through a trained connector.

Importing this package registers ``trained_adapter/{frozen,flamingo,blip2,palme}`` (connectors
trained here), ``trained_adapter/blip2_pretrained`` (a user's BLIP-2 checkpoint),
``trained_adapter/vlm_pretrained`` (a user's interleaved image-text model: IDEFICS2/3, SmolVLM, LLaVA),
``trained_adapter/flamingo_pretrained`` (a published Flamingo-architecture checkpoint: IDEFICS v1)
and ``trained_adapter/served_vlm`` (such a model behind an OpenAI-compatible chat endpoint).
"""

from paradigms.trained_adapter import paradigm  # noqa: F401  (registers the connector variants)
from paradigms.trained_adapter import blip2_pretrained  # noqa: F401,E402  (registers blip2_pretrained)
from paradigms.trained_adapter import vlm_pretrained  # noqa: F401,E402  (registers vlm_pretrained)
from paradigms.trained_adapter import flamingo_pretrained  # noqa: F401,E402  (registers flamingo_pretrained)
from paradigms.trained_adapter import served_vlm  # noqa: F401,E402  (registers served_vlm)
