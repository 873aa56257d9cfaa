"""Colour augmentation of training frames, as the reference configures it (torch only).

With probability ``shared_probability`` one draw is applied to all frames of a sequence (so the
frames stay photometrically consistent), otherwise every frame gets its own draw. A draw is:
with probability ``jitter_probability`` brightness, contrast, saturation and hue jitter in a
random order, then grayscale with probability ``grayscale_probability``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class ColorAugmentation:
    brightness: float = 0.5
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 0.1
    jitter_probability: float = 0.9
    grayscale_probability: float = 0.05
    shared_probability: float = 0.7

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """images: ``[S, 3, H, W]`` float in [0, 1]. Returns a new tensor of the same shape."""
        if _uniform(generator) < self.shared_probability:
            return self._one_draw(images, generator)
        return torch.stack([self._one_draw(frame[None], generator)[0] for frame in images])

    def _one_draw(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if _uniform(generator) < self.jitter_probability:
            for op in torch.randperm(4, generator=generator).tolist():
                if op == 0:
                    images = (images * _uniform(generator, 1 - self.brightness, 1 + self.brightness)).clamp(0, 1)
                elif op == 1:
                    mean = grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
                    factor = _uniform(generator, 1 - self.contrast, 1 + self.contrast)
                    images = (factor * images + (1 - factor) * mean).clamp(0, 1)
                elif op == 2:
                    factor = _uniform(generator, 1 - self.saturation, 1 + self.saturation)
                    images = (factor * images + (1 - factor) * grayscale(images)).clamp(0, 1)
                else:
                    images = shift_hue(images, _uniform(generator, -self.hue, self.hue))
        if _uniform(generator) < self.grayscale_probability:
            images = grayscale(images).expand_as(images).clone()
        return images


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` → ``[..., 1, H, W]`` luma."""
    r, g, b = images.unbind(dim=-3)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(-3)


def shift_hue(images: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns (in [-0.5, 0.5]) in HSV space. images: ``[..., 3, H, W]``."""
    r, g, b = images.unbind(dim=-3)
    maximum, _ = images.max(dim=-3)
    minimum, _ = images.min(dim=-3)
    chroma = maximum - minimum
    safe_chroma = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(maximum == r, ((g - b) / safe_chroma) % 6,
                      torch.where(maximum == g, (b - r) / safe_chroma + 2, (r - g) / safe_chroma + 4))
    hue = torch.where(chroma > 0, hue / 6.0, torch.zeros_like(hue))
    hue = (hue + shift) % 1.0
    saturation = torch.where(maximum > 0, chroma / torch.where(maximum > 0, maximum, torch.ones_like(maximum)),
                             torch.zeros_like(maximum))
    return hsv_to_rgb(hue, saturation, maximum)


def hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Channels ``[..., H, W]`` each, hue in turns → ``[..., 3, H, W]``."""
    sector = hue * 6.0
    channels = []
    for offset in (5.0, 3.0, 1.0):  # r, g, b
        k = (offset + sector) % 6.0
        weight = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
        channels.append(value - value * saturation * weight)
    return torch.stack(channels, dim=-3)
