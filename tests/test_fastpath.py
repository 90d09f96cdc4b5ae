"""pin_fp32_depthwise: only depthwise k>=5 convs change, fp32 results unchanged, autocast runs them in fp32."""

import torch
from torch import nn

from revq.training.fastpath import pin_fp32_depthwise


def test_pin_fp32_depthwise():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 5, padding=2))
    x = torch.randn(2, 8, 6, 6)
    ref = net(x)
    assert pin_fp32_depthwise(net) == 1
    torch.testing.assert_close(net(x), ref, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net[0](x).dtype == torch.float32
        assert net[1](x).dtype == torch.bfloat16
        y = net(x)
    y.float().sum().backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.dtype == torch.float32


def test_trainer_pins_depthwise_convs_only_for_cpu_bf16():
    from revq.config import RectifierConfig, ReVQConfig
    from revq.model import ReVQ
    from revq.training.config import TrainConfig
    from revq.training.trainer import place_model

    def fp32_pinned(model):
        return sum("forward" in vars(m) for m in model.modules() if isinstance(m, nn.Conv2d))

    model_cfg = ReVQConfig(num_tokens=64, codebook_size=8, rectifier=RectifierConfig(width=64, depth=1))
    cpu = torch.device("cpu")
    assert fp32_pinned(place_model(ReVQ(model_cfg), TrainConfig(model=model_cfg, bf16=False), cpu)) == 0
    pinned = place_model(ReVQ(model_cfg), TrainConfig(model=model_cfg, bf16=True), cpu)
    depthwise_5x5 = [m for m in pinned.modules() if isinstance(m, nn.Conv2d)
                     and m.groups == m.in_channels > 1 and max(m.kernel_size) >= 5]
    assert depthwise_5x5 and fp32_pinned(pinned) == len(depthwise_5x5)
