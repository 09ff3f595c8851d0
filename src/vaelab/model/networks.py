"""Encoder and decoder networks, sized from the data's shape.

Configs name these with ``_partial_: true``; the VAE finishes the call with the
image shape, the latent size and the number of decoder output channels that the
likelihood needs, so one network config serves every dataset and likelihood.
The encoder outputs ``2 * latent_dim`` numbers per image: mean and log-variance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from vaelab.exceptions import ConfigError


def activation_layer(name: str) -> nn.Module:
    """An activation by its torch.nn class name (``ReLU``, ``Tanh``, ``ELU``, ``GELU``, ...)."""
    cls = getattr(nn, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"model activation={name!r} is not a torch.nn activation (e.g. ReLU, Tanh, ELU, GELU, SiLU)")
    return cls()


def _mlp(sizes: Sequence[int], activation: str) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), activation_layer(activation)]
    return layers


class MLPEncoder(nn.Sequential):
    def __init__(
        self, image_shape: Sequence[int], latent_dim: int, hidden: Sequence[int] = (256, 256), activation: str = "ReLU"
    ):
        data_dim = math.prod(image_shape)
        sizes = [data_dim, *hidden]
        super().__init__(nn.Flatten(), *_mlp(sizes, activation), nn.Linear(sizes[-1], 2 * latent_dim))


class MLPDecoder(nn.Sequential):
    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        out_channels: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "ReLU",
    ):
        _, height, width = image_shape
        sizes = [latent_dim, *reversed(list(hidden))]
        super().__init__(
            *_mlp(sizes, activation),
            nn.Linear(sizes[-1], out_channels * height * width),
            nn.Unflatten(1, (out_channels, height, width)),
        )


def conv_feature_shape(image_shape: Sequence[int], channels: Sequence[int]) -> tuple[int, int, int]:
    """Shape after the encoder's stride-2 convolutions; the image must halve exactly each time."""
    _, height, width = image_shape
    factor = 2 ** len(channels)
    if height % factor or width % factor:
        raise ConfigError(
            f"model=conv with {len(channels)} stride-2 layers needs image height and width divisible by {factor}; "
            f"the data's images are {height}x{width}. Use fewer model.encoder.channels or resize the data."
        )
    return channels[-1], height // factor, width // factor


class ConvEncoder(nn.Module):
    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 256,
        activation: str = "ReLU",
    ):
        super().__init__()
        feature_shape = conv_feature_shape(image_shape, channels)
        layers: list[nn.Module] = []
        in_ch = image_shape[0]
        for out_ch in channels:
            layers += [nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1), activation_layer(activation)]
            in_ch = out_ch
        layers += [nn.Flatten(), nn.Linear(math.prod(feature_shape), hidden), activation_layer(activation)]
        layers.append(nn.Linear(hidden, 2 * latent_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 256,
        activation: str = "ReLU",
    ):
        super().__init__()
        feature_shape = conv_feature_shape(image_shape, channels)
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, hidden),
            activation_layer(activation),
            nn.Linear(hidden, math.prod(feature_shape)),
            activation_layer(activation),
            nn.Unflatten(1, feature_shape),
        ]
        reversed_channels = list(reversed(list(channels)))
        for in_ch, out_ch in zip(reversed_channels[:-1], reversed_channels[1:]):
            layers += [
                nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1),
                activation_layer(activation),
            ]
        layers.append(nn.ConvTranspose2d(reversed_channels[-1], out_channels, kernel_size=4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
