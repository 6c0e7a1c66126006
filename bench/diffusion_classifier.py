"""How well an embedded DiT's noise prediction tells its classes apart, as a diffusion classifier: for held-out
images, the label whose prediction has the least error (summed over timesteps 250, 500 and 750, two noise draws
each) is the guess; prints its accuracy among the ten digits and among the ten Fashion-MNIST kinds. A cheap
measure of how far the class conditioning has been learned while the model trains (the samples' own figures come
from examples/embedded_quality.rs and take far longer).

Run (from the repository root): DMA_FIXTURE_DEPS=1 source scripts/env.sh && python bench/diffusion_classifier.py
MODEL_FOLDER [IMAGES_PER_CLASS]   (e.g. train/dit-model; default 10 images per class, one thread, about 3 minutes)
"""
import gzip
import json
import os
import sys

import numpy as np
import torch
from diffusers import DiTTransformer2DModel

torch.set_num_threads(1)
torch.manual_seed(0)
model = DiTTransformer2DModel.from_pretrained(os.path.join(sys.argv[1], "transformer")).float().eval()
per_class = int(sys.argv[2]) if len(sys.argv) > 2 else 10
data = os.path.join(os.environ.get("DMA_CACHE") or os.path.expanduser("~/.cache/dma"), "data")


def padded(images):
    """[N,784] in [0,1] -> [N,1,32,32] in [-1,1], zero-padded as src/data/dataset.rs pads."""
    x = torch.tensor(np.asarray(images), dtype=torch.float32).view(-1, 1, 28, 28) * 2 - 1
    return torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)


# Held-out images: the digits at index 17, 18, 19 mod 20 (src/data/mnist_digits.rs), Fashion-MNIST's test set.
digits = []
for d in range(10):
    with open(os.path.join(data, "mnist-digits", f"{d}.json")) as f:
        images = np.array(json.load(f)["data"], dtype=np.float32).reshape(-1, 784)
    digits.append(padded(images[[i for i in range(len(images)) if i % 20 in (17, 18, 19)][:per_class]]))
with gzip.open(os.path.join(data, "fashion-mnist", "t10k-images-idx3-ubyte.gz")) as f:
    fashion_images = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 784) / 255.0
with gzip.open(os.path.join(data, "fashion-mnist", "t10k-labels-idx1-ubyte.gz")) as f:
    fashion_labels = np.frombuffer(f.read()[8:], np.uint8)
fashion = [padded(fashion_images[np.where(fashion_labels == c)[0][:per_class]]) for c in range(10)]

# The embedded models' DDPM schedule: linear betas 1e-4 to 0.02 over 1000 steps.
alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)


def accuracy(groups, first_label):
    correct = total = 0
    for true_class, x in enumerate(groups):
        n = x.shape[0]
        errors = torch.zeros(n, 10)
        for t in (250, 500, 750):
            for _ in range(2):
                noise = torch.randn_like(x)
                a = alphas_cumprod[t]
                noisy = a.sqrt() * x + (1 - a).sqrt() * noise
                for k in range(10):
                    with torch.no_grad():
                        labels = torch.full((n,), first_label + k)
                        predicted = model(noisy, timestep=torch.full((n,), t), class_labels=labels).sample
                    errors[:, k] += ((predicted - noise) ** 2).mean(dim=(1, 2, 3))
        correct += (errors.argmin(1) == true_class).sum().item()
        total += n
    return correct / total


# Labels 0-9 are the Fashion-MNIST kinds, 10-19 the digits (src/data/captions.rs).
print(f"diffusion-classifier accuracy, {per_class} held-out images per class: digits {accuracy(digits, 10):.2f}, "
      f"fashion {accuracy(fashion, 0):.2f}")
