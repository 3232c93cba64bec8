"""Every registered backbone: shapes, gradients, determinism, sizes, insightface key layout."""
from __future__ import annotations

import pytest
import torch

from facekd.errors import ConfigError
from facekd.models.complexity import count_macs, count_params, describe_model
from facekd.models.registry import BACKBONES, create_backbone, list_backbones, model_table

# Narrow widths keep every test fast.
TEST_WIDTH = {"iresnet_tiny": 0.5, "mfn": 0.25, "mbf": 0.25}
EMB = 32
# Deep variants differ from iresnet18/34 only in depth; they take seconds each even when narrow.
DEEP = {"iresnet50", "iresnet100", "iresnet200"}
EVERY_BACKBONE = [pytest.param(n, marks=pytest.mark.slow) if n in DEEP else n for n in list_backbones()]


def _build(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone(name, embedding_size=EMB, width=TEST_WIDTH.get(name, 0.125), **kwargs)


def _images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 112, 112, generator=torch.Generator().manual_seed(1))


def test_registry_lists_every_family():
    names = list_backbones()
    assert names == list(BACKBONES)
    for depth in ("_tiny", "10", "18", "34", "50", "100", "200"):
        assert f"iresnet{depth}" in names
    assert "mfn" in names and "mbf" in names


@pytest.mark.parametrize("name", EVERY_BACKBONE)
def test_forward_backward_and_eval_determinism(name):
    model = _build(name)
    x = _images()
    out = model(x)
    assert out.shape == (2, EMB) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        first, second, alone = model(x), model(x), model(x[:1])
    assert torch.equal(first, second)
    # an untrained iResNet's eval output is huge (insightface's N(0, 0.1) init): compare directions
    unit = torch.nn.functional.normalize
    torch.testing.assert_close(unit(alone)[0], unit(first)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["iresnet_tiny", "mbf", "mfn"])
def test_channels_last_gives_same_embedding(name):
    model = _build(name).eval()
    x = _images()
    with torch.no_grad():
        plain = model(x)
        fast = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    unit = torch.nn.functional.normalize
    torch.testing.assert_close(unit(fast), unit(plain), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "millions"), [("iresnet50", 43.59), ("iresnet100", 65.16), ("mfn", 1.20), ("mbf", 2.06)]
)
def test_published_parameter_counts(name, millions):
    with torch.device("meta"):
        model = create_backbone(name)
    assert count_params(model) / 1e6 == pytest.approx(millions, rel=0.005)


@pytest.mark.parametrize(("name", "gmacs"), [("iresnet50", 6.31), ("mfn", 0.221), ("mbf", 0.438)])
def test_macs_at_112(name, gmacs):
    with torch.device("meta"):
        model = create_backbone(name)
    assert count_macs(model) / 1e9 == pytest.approx(gmacs, rel=0.01)


def test_count_macs_of_a_known_layer_and_describe():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    assert count_macs(model, (4, 3, 2, 2)) == 4 * 12 * 5
    assert model.training  # restored after counting
    info = describe_model(create_backbone("iresnet_tiny", embedding_size=EMB))
    assert set(info) == {"params", "params_m", "gmacs"} and info["params"] > 0 and info["gmacs"] > 0


def _bn(keys: dict, prefix: str, ch: int) -> None:
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{prefix}.{leaf}"] = (ch,)
    keys[f"{prefix}.num_batches_tracked"] = ()


def insightface_iresnet_keys(layers, emb: int = 512) -> dict[str, tuple[int, ...]]:
    """State_dict keys and shapes of insightface arcface_torch iresnet, in its module order."""
    keys: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 3, 3)}
    _bn(keys, "bn1", 64)
    keys["prelu.weight"] = (64,)
    in_ch = 64
    for stage, (depth, ch) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
        for index in range(depth):
            p, cin = f"layer{stage}.{index}", in_ch if index == 0 else ch
            _bn(keys, f"{p}.bn1", cin)
            keys[f"{p}.conv1.weight"] = (ch, cin, 3, 3)
            _bn(keys, f"{p}.bn2", ch)
            keys[f"{p}.prelu.weight"] = (ch,)
            keys[f"{p}.conv2.weight"] = (ch, ch, 3, 3)
            _bn(keys, f"{p}.bn3", ch)
            if index == 0:  # every stage starts with stride 2, so with a projection shortcut
                keys[f"{p}.downsample.0.weight"] = (ch, cin, 1, 1)
                _bn(keys, f"{p}.downsample.1", ch)
        in_ch = ch
    _bn(keys, "bn2", 512)
    keys["fc.weight"], keys["fc.bias"] = (emb, 512 * 7 * 7), (emb,)
    _bn(keys, "features", emb)
    return keys


def test_iresnet50_loads_insightface_state_dict_strictly():
    expected = insightface_iresnet_keys((3, 4, 14, 3))
    assert len(expected) == 475
    with torch.device("meta"):
        model = create_backbone("iresnet50")
        state = {
            k: torch.empty(shape, dtype=torch.long if k.endswith("tracked") else torch.float32)
            for k, shape in expected.items()
        }
    assert list(model.state_dict()) == list(expected)
    model.load_state_dict(state, strict=True, assign=True)
    assert not model.features.weight.requires_grad  # insightface fixes the last BN's scale


def test_mobilefacenet_key_layouts_match_their_origins():
    mfn = create_backbone("mfn").state_dict()
    assert len(mfn) == 331
    assert mfn["conv1.conv.weight"].shape == (64, 3, 3, 3)
    assert mfn["conv2_dw.conv.weight"].shape == (64, 1, 3, 3)
    assert mfn["conv_23.conv_dw.conv.weight"].shape == (128, 1, 3, 3)
    assert mfn["conv_4.model.5.project.conv.weight"].shape == (128, 256, 1, 1)
    assert mfn["conv_6_sep.prelu.weight"].shape == (512,)
    assert mfn["output_layer.conv_6_dw.conv.weight"].shape == (512, 1, 7, 7)
    assert mfn["output_layer.linear.weight"].shape == (512, 512)
    assert "output_layer.bn.weight" not in mfn and "output_layer.bn.running_mean" in mfn  # affine=False
    mbf = create_backbone("mbf").state_dict()
    assert len(mbf) == 333
    assert mbf["layers.0.layers.0.weight"].shape == (128, 3, 3, 3)
    assert mbf["layers.1.layers.0.weight"].shape == (128, 2, 3, 3)  # 64 groups over 128 channels
    assert mbf["layers.5.layers.5.layers.2.layers.0.weight"].shape == (256, 256, 1, 1)
    assert mbf["conv_sep.layers.2.weight"].shape == (512,)
    assert mbf["features.layers.0.layers.0.weight"].shape == (512, 1, 7, 7)
    assert mbf["features.layers.2.weight"].shape == (512, 512)
    assert mbf["features.layers.3.weight"].shape == (512,)


def test_width_scales_channels_with_a_floor_of_eight():
    model = create_backbone("iresnet18", width=0.01, embedding_size=EMB)
    assert model.conv1.out_channels == 8 and model.layer4[0].conv1.out_channels == 64
    assert create_backbone("mbf", width=0.3).layers[1].layers[0].groups == 19


def test_fp16_flag_is_a_no_op_on_cpu():
    torch.manual_seed(0)
    plain = create_backbone("iresnet_tiny", embedding_size=EMB).eval()
    half = create_backbone("iresnet_tiny", embedding_size=EMB, fp16=True).eval()
    half.load_state_dict(plain.state_dict())
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(half(x), plain(x))


def test_bad_choices_raise_config_errors():
    with pytest.raises(ConfigError, match="iresnet50") as err:
        create_backbone("resnet50")
    assert "mfn" in str(err.value)
    with pytest.raises(ConfigError, match="dropout"):
        create_backbone("mfn", dropout=0.2)
    with pytest.raises(ConfigError, match="width"):
        create_backbone("iresnet18", width=0.0)


def test_model_table_lists_sizes():
    table = model_table(["iresnet_tiny", "mfn"]).splitlines()
    assert len(table) == 3 and table[1].startswith("iresnet_tiny")
    mfn = next(line for line in table if line.startswith("mfn "))
    assert mfn.split()[1:] == ["1.20", "0.221"]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("ch", "size"), [(3, 7), (8, 56), (16, 28), (64, 14)])
def test_subsampled_shortcut_is_the_strided_1x1_conv(ch, size, channels_last):
    """iResNet's projection shortcut avoids oneDNN's strided 1x1 path (issue 13) with the same math."""
    from facekd.models.iresnet import SubsampledPointwiseConv

    torch.manual_seed(0)
    conv = SubsampledPointwiseConv(ch, 2 * ch, stride=2)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, ch, size, size).contiguous(memory_format=layout).requires_grad_()
    ours = conv(x)
    assert torch.equal(ours, torch.nn.functional.conv2d(x, conv.weight, None, stride=2))
    ours_grads = torch.autograd.grad(ours.square().sum(), (x, conv.weight))
    # The reference backward is the very kernel that segfaults on AVX-512 oneDNN: it runs without oneDNN.
    with torch.backends.mkldnn.flags(enabled=False):
        strided = torch.nn.functional.conv2d(x, conv.weight, None, stride=2)
        strided_grads = torch.autograd.grad(strided.square().sum(), (x, conv.weight))
    for a, b in zip(ours_grads, strided_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # summation order of the weight gradient
    assert isinstance(conv, torch.nn.Conv2d) and conv.stride == (2, 2) and list(conv.state_dict()) == ["weight"]
