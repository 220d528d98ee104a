"""The feature-inversion attack and its image-quality metrics."""

from __future__ import annotations

import math

import pytest
import torch

from flnode.learning.inversion import inversion_attack, psnr, ssim


def test_psnr_of_known_error() -> None:
    x = torch.zeros(2, 1, 28, 28)
    y = torch.full((2, 1, 28, 28), 0.1)  # MSE 0.01 → 20 dB
    assert psnr(x, y).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)


def test_ssim_identity_and_independence() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 28, 28, generator=gen)
    assert ssim(x, x).tolist() == pytest.approx([1.0] * 4, abs=1e-5)
    y = torch.rand(4, 1, 28, 28, generator=gen)
    # Independent noise images share almost no structure.
    assert ssim(x, y).abs().max().item() < 0.1


def test_ssim_penalises_structure_more_than_brightness() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 28, 28, generator=gen) * 0.5
    brighter = x + 0.02
    scrambled = x.flatten()[torch.randperm(784, generator=gen)].view_as(x)
    assert ssim(x, brighter).item() > 0.9 > ssim(x, scrambled).item()


def _synthetic(n: int, d: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images that are a smooth function of a d-dim latent, which is what the 'features' carry."""
    basis = torch.randn(d, 784, generator=torch.Generator().manual_seed(99))
    latent = torch.randn(n, d, generator=gen)
    images = torch.sigmoid(latent @ basis).view(n, 1, 28, 28)
    return latent, images


def test_attack_recovers_images_from_clean_features_but_not_from_noise() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    d = 4
    pub_latent, pub_images = _synthetic(1500, d, gen)
    tgt_latent, tgt_images = _synthetic(200, d, gen)
    latents = {id(pub_images): pub_latent, id(tgt_images): tgt_latent}

    def clean_release(images: torch.Tensor) -> torch.Tensor:
        return latents[id(images)]

    def noisy_release(images: torch.Tensor) -> torch.Tensor:
        z = latents[id(images)]
        return z + 1000.0 * torch.randn(z.shape, generator=gen)

    clean = inversion_attack(clean_release, pub_images, tgt_images, epochs=8)
    noisy = inversion_attack(noisy_release, pub_images, tgt_images, epochs=8)
    assert clean.n_public == 1500 and clean.n_targets == 200
    # Clean features: the decoder clearly beats guessing the mean image.
    assert clean.attack.psnr_db > clean.mean_image_baseline.psnr_db + 3.0
    assert clean.attack.ssim > clean.mean_image_baseline.ssim + 0.1
    # Overwhelming noise: no better than the mean image (within a small margin).
    assert noisy.attack.psnr_db < noisy.mean_image_baseline.psnr_db + 0.5
    assert math.isfinite(noisy.attack.psnr_db)
