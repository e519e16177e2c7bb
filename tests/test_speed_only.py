"""Options declared ``speed_only`` stay out of cache keys: two runs that differ only in one share
every cached answer; every declared name is a real option of its variant."""

from __future__ import annotations

import pytest

from harness.cache import ResultCache
from harness.config import parse_config
from harness.registry import paradigms


def test_every_speed_only_name_is_an_option_of_its_variant() -> None:
    declared = {name: cls.speed_only for name, cls in paradigms().items() if cls.speed_only}
    assert {"guided_decoding/magic", "guided_decoding/zerocap", "trained_adapter/frozen",
            "trained_adapter/blip2_pretrained", "trained_adapter/vlm_pretrained"} <= set(declared)
    for name, fields in declared.items():
        cls = paradigms()[name]
        assert fields <= set(cls.Options.model_fields), (name, fields - set(cls.Options.model_fields))


def test_a_speed_only_name_that_is_not_an_option_stops_registration() -> None:
    from typing import ClassVar

    from harness.config import Strict
    from harness.interface import Paradigm
    from harness.registry import RegistrationError, register_paradigm

    class Opts(Strict):
        batch_size: int = 4

    class Typo(Paradigm):
        family = "text_conversion"
        variant = "speed_only_typo"
        uses: ClassVar[tuple[str, ...]] = ()
        Options = Opts
        speed_only: ClassVar[frozenset[str]] = frozenset({"batchsize"})

        def answer_batch(self, requests):  # noqa: ANN001, ANN201
            return []

    with pytest.raises(RegistrationError, match=r"speed_only names \['batchsize'\].*options: batch_size"):
        register_paradigm(Typo)


@pytest.mark.slow
def test_runs_differing_only_in_a_speed_only_option_share_the_cache(tmp_path, tiny_llm_dir) -> None:
    from harness.backbones import Backbones
    from harness.plan import plan_run
    from harness.runner import Runner

    def config(decode_batch_size: int, seed: int = 0):
        return parse_config({
            "seed": seed, "limit": 3, "batch_size": 4, "bootstrap": 20,
            "paradigms": [{"name": "trained_adapter/frozen_fixed_encoder",
                           "options": {"train": {"steps": 0}, "decode_batch_size": decode_batch_size}}],
            "tasks": [{"name": "world_caption"}],
            "models": {"llm": {"source": "local", "name": str(tiny_llm_dir), "device": "cpu", "dtype": "float32"}},
            "generation": {"max_new_tokens": 3},
        })

    backbones = Backbones(config(1).models, cache_dir=tmp_path / "mmcache")
    with ResultCache(tmp_path / "cache.sqlite") as cache:
        def run(cfg):
            return Runner(plan_run(cfg), cache=cache, backbones=backbones, progress=False).run()

        first = run(config(1))
        assert [r.computed for r in first] == [3]
        second = run(config(4))  # only the decode batch differs: every answer comes from the cache
        assert [r.computed for r in second] == [0]
        assert [row["prediction"] for row in second[0].rows] == [row["prediction"] for row in first[0].rows]
        assert [r.computed for r in run(config(4, seed=1))] == [3]  # an option that matters still misses
