"""Shared fixtures: a tiny seeded ViT and seeded synthetic batches for it."""

from __future__ import annotations

import os

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer


def _has_peft() -> bool:
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


#: Skips a test without the ``peft`` extra.
needs_peft = pytest.mark.skipif(not _has_peft(), reason="peft is not installed (pip install peft==0.21.2)")

IMG = 32
NUM_CLASSES = 10


def pytest_configure(config):
    """Under pytest-xdist (``-n``), give each worker its share of the cores for torch's in-process
    work: two workers each running 2 threads on 2 cores spin against each other. Processes the
    tests start keep torch's default (their measured bytes must not depend on the worker count)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked ``cuda`` where there is no CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def make_tiny_vit(seed: int = 0, **kwargs) -> VisionTransformer:
    """A 2-block ViT (32x32 images, 8x8 patches, width 32), float32 on the CPU.

    Biases and norm affines are initialised to 0 / 1 by timm; they are nudged
    (seeded) so that no activation statistic or gradient is trivially symmetric.
    """
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=IMG, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                              num_classes=NUM_CLASSES, **kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.to(device="cpu", dtype=torch.float32).eval()


@pytest.fixture
def tiny_vit() -> VisionTransformer:
    return make_tiny_vit()


def make_batches(num_batches: int = 3, batch_size: int = 6, seed: int = 0,
                 num_labels: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Seeded ``(images, labels)`` pairs; few distinct labels so classes repeat in a batch."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num_batches):
        images = torch.randn(batch_size, 3, IMG, IMG, generator=gen)
        labels = torch.randint(0, num_labels, (batch_size,), generator=gen)
        out.append((images, labels))
    return out


@pytest.fixture
def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return make_batches()
