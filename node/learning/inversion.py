"""A feature-inversion attack, so that the privacy claim is measured and not only argued.

The attacker is as strong as the protocol lets anyone be: it knows the model spec, the frozen
extractor, the bounding and the noise mechanism, and it has public images (the manufacturer's public
slice). It trains a decoder that maps *released* features (bounded + noised, exactly as a device
releases them) back to images, then applies it to features released for images it has never seen.
Reconstruction quality is reported as PSNR and SSIM against the true images, beside two reference
points: the same attack on noise-free features (what the noise buys) and the "mean image" guess
(what an attacker gets from no features at all). A reconstruction no better than the mean image
means the released features told the attacker nothing it could use about the individual image.

This measures one attack; differential privacy bounds every attack. The measured numbers are a
sanity check of the mechanism and its calibration, not a proof.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FeatureFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True, slots=True)
class ReconstructionQuality:
    """Mean PSNR (dB) and SSIM of reconstructions against the true images."""

    psnr_db: float
    ssim: float


@dataclass(frozen=True, slots=True)
class InversionResult:
    """The attack on released features, with its two reference points."""

    attack: ReconstructionQuality
    mean_image_baseline: ReconstructionQuality
    n_public: int
    n_targets: int


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image (dB) of [N, C, H, W] tensors."""
    mse = ((x - y) ** 2).flatten(1).mean(dim=1).clamp_min(1e-12)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).to(torch.float32)


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Structural similarity per image (Wang et al. 2004: 11×11 Gaussian window, σ = 1.5).

    Inputs are [N, C, H, W]; channels are averaged. Valid-window convolution, as in the reference
    implementation, so borders are not padded with invented values.
    """
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    channels = x.shape[1]
    window = _gaussian_window().to(x.dtype).expand(channels, 1, 11, 11).contiguous()

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = filt(x), filt(y)
    sigma_x = filt(x * x) - mu_x**2
    sigma_y = filt(y * y) - mu_y**2
    sigma_xy = filt(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2)
    return (num / den).flatten(1).mean(dim=1)


def quality(reconstructed: Tensor, target: Tensor) -> ReconstructionQuality:
    """Mean PSNR and SSIM of a batch of reconstructions."""
    return ReconstructionQuality(
        psnr_db=float(psnr(reconstructed, target).mean()),
        ssim=float(ssim(reconstructed, target).mean()),
    )


class FeatureDecoder(nn.Module):
    """Released feature vector (d numbers) → 1×28×28 image in [0, 1]."""

    def __init__(self, d: int, image_size: int = 28) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4. Got: {image_size}")
        s = image_size // 4
        self.s = s
        self.fc = nn.Sequential(nn.Linear(d, 256), nn.ReLU(), nn.Linear(256, 64 * s * s), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.deconv(self.fc(z).view(-1, 64, self.s, self.s))


def train_decoder(
    released: Tensor,
    images: Tensor,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
) -> FeatureDecoder:
    """Fit a decoder from released features to images by mean squared error."""
    torch.manual_seed(seed)
    decoder = FeatureDecoder(released.shape[1], images.shape[-1])
    opt = torch.optim.Adam(decoder.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = released.shape[0]
    decoder.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = F.mse_loss(decoder(released[idx]), images[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    decoder.eval()
    return decoder


def inversion_attack(
    release: FeatureFn,
    public_images: Tensor,
    target_images: Tensor,
    *,
    epochs: int = 10,
    seed: int = 0,
) -> InversionResult:
    """Run the attack.

    Parameters
    ----------
    release:
        Images ([N, 1, H, W] in [0, 1]) → released features, exactly as a device computes them
        (extractor, bounding, noise); pass a noise-free release to measure the ε = ∞ reference.
    public_images:
        The attacker's training images (e.g. the manufacturer's public slice).
    target_images:
        Images the attacker never saw, whose released features it tries to invert.
    """
    with torch.no_grad():
        public_released = release(public_images)
        target_released = release(target_images)
    decoder = train_decoder(public_released, public_images, epochs=epochs, seed=seed)
    with torch.no_grad():
        reconstructed = decoder(target_released)
        mean_image = public_images.mean(dim=0, keepdim=True).expand_as(target_images)
    return InversionResult(
        attack=quality(reconstructed, target_images),
        mean_image_baseline=quality(mean_image, target_images),
        n_public=public_images.shape[0],
        n_targets=target_images.shape[0],
    )
