"""Image views for the finetuning defences: AutoAugment (CleanCLIP) and light noise + erasing (PAR).

Every view is an :data:`ImageAug`: it takes one decoded image as a uint8 ``(3, H, W)`` tensor and
returns a new float32 ``(3, H, W)`` tensor in [0, 1]; the input is not modified. A view draws its
randomness from torch's GLOBAL generator and seeds nothing itself: the data loader seeds that
generator per sample (inside :func:`clipguard.utils.seeding.seeded_torch_rng`), so the same seed
gives the same view, and a view is redrawn whenever the sample is loaded again (each epoch).

Views are small callable objects, picklable for the loader's worker processes.

Example:
    >>> import torch
    >>> from clipguard.data.augment import autoaugment_view
    >>> view = autoaugment_view()
    >>> out = view(torch.zeros(3, 32, 32, dtype=torch.uint8))
    >>> out.dtype, tuple(out.shape)
    (torch.float32, (3, 32, 32))
"""
from __future__ import annotations

from typing import Callable

import torch

from clipguard.errors import ConfigError
from clipguard.utils.validate import check_real

__all__ = ["ImageAug", "autoaugment_view", "light_view"]

ImageAug = Callable[[torch.Tensor], torch.Tensor]
"""uint8 ``(3, H, W)`` image -> float32 ``(3, H, W)`` view in [0, 1], drawn from torch's global generator."""


def _check_image(image: torch.Tensor) -> None:
    """ConfigError unless ``image`` is a uint8 ``(3, H, W)`` tensor."""
    if not (isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.ndim == 3
            and image.shape[0] == 3):
        got = (f"{image.dtype} tensor of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor)
               else type(image).__name__)
        raise ConfigError(f"an image view takes a uint8 (3, H, W) tensor (decode the image to RGB bytes first), "
                          f"got a {got}")


class _AutoAugmentView:
    """torchvision's AutoAugment, ImageNet policy, one sub-policy drawn per call; then / 255."""

    def __init__(self) -> None:
        from torchvision.transforms import AutoAugment, AutoAugmentPolicy

        self._augment = AutoAugment(AutoAugmentPolicy.IMAGENET)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_image(image)
        return self._augment(image).to(torch.float32) / 255

    def __repr__(self) -> str:
        return "autoaugment_view()"


class _LightView:
    """PAR's light view: Gaussian noise with probability ``p_noise``, then random erasing with ``p_erase``."""

    def __init__(self, noise_sigma: float, p_noise: float, p_erase: float) -> None:
        from torchvision.transforms import RandomErasing

        self.noise_sigma = noise_sigma
        self.p_noise = p_noise
        self.p_erase = p_erase
        self._erase = RandomErasing(p=p_erase, value=0)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_image(image)
        out = image.to(torch.float32) / 255
        if torch.rand(1).item() < self.p_noise:  # always drawn, so the stream does not depend on p
            out = (out + self.noise_sigma * torch.randn_like(out)).clamp_(0, 1)
        return self._erase(out)

    def __repr__(self) -> str:
        return f"light_view(noise_sigma={self.noise_sigma:g}, p_noise={self.p_noise:g}, p_erase={self.p_erase:g})"


def autoaugment_view() -> ImageAug:
    """CleanCLIP's image view: torchvision ``AutoAugment`` with its ImageNet policy, redrawn per call.

    The policy runs on the uint8 tensor (as torchvision intends), then the result is divided by 255.

    Returns:
        An :data:`ImageAug`: uint8 ``(3, H, W)`` -> float32 ``(3, H, W)`` in [0, 1], same ``H, W``.
        Calling it with anything but a uint8 ``(3, H, W)`` tensor raises ConfigError.
    """
    return _AutoAugmentView()


def light_view(noise_sigma: float = 0.2, p_noise: float = 0.5, p_erase: float = 0.5) -> ImageAug:
    """PAR's light image view (Perturb and Recover, arXiv 2412.00727).

    The image is scaled to float [0, 1]; with probability ``p_noise`` it gets additive Gaussian noise
    N(0, ``noise_sigma`` ** 2) per pixel and channel, clamped to [0, 1]; then with probability
    ``p_erase`` torchvision's ``RandomErasing`` (default scale and ratio) sets a random rectangle to 0.
    With ``p_noise = p_erase = 0`` the view is exactly ``image / 255``.

    Args:
        noise_sigma: standard deviation of the noise, in units of the [0, 1] pixel range (>= 0).
        p_noise: probability of adding noise, in [0, 1].
        p_erase: probability of erasing a rectangle, in [0, 1].

    Returns:
        An :data:`ImageAug`: uint8 ``(3, H, W)`` -> float32 ``(3, H, W)`` in [0, 1].

    Raises:
        ConfigError: an argument out of its range.
    """
    noise_sigma = check_real("noise_sigma", noise_sigma, low=0)
    p_noise = check_real("p_noise", p_noise, low=0, high=1)
    p_erase = check_real("p_erase", p_erase, low=0, high=1)
    return _LightView(noise_sigma, p_noise, p_erase)
