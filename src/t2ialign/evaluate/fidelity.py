"""Image fidelity: Fréchet distances between generated images and reference images (paper Table 2).

The paper measures fidelity as FID [13] on MS-CoCo: the Fréchet distance between Gaussians fitted to
Inception-v3 pool features of generated and of real images. In the shapes world the "real" images of a
prompt are the renderer's pictures of it (the pre-training distribution), so generated images are compared
with renders of the same prompts, one render per generated image.

Two feature extractors, one formula:

- ``fd_clip``: FD on CLIP image embeddings (the FD_CLIP variant of Kynkäänniemi et al. 2023), with the
  run's CLIP; always available, and the number to compare between models of one run.
- ``fid_inception``: true FID on Inception-v3 pool3 features (2048-d), when the user gives the standard
  FID weights by local path (torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` or
  pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``; same keys). Nothing is downloaded.

FD estimates are biased upward at small n: compare numbers computed with the same n only.

Reference statistics (mu, sigma) are cached in a folder the caller gives, keyed by the reference images'
content and the feature extractor's fingerprint: ``ref-<key>.safetensors`` (float64 ``mu`` (D,) and
``sigma`` (D, D)) and ``ref-<key>.json`` beside it, written last, saying what was hashed.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save as save_numpy
from torch import nn
from torch.nn import functional as F

from t2ialign.core.fingerprint import file_sha256
from t2ialign.core.fsutil import atomic_write
from t2ialign.models.embed import clip_fingerprint, embed_images
from t2ialign.world.render import render

# Versions of the feature definitions: bump when what a feature extractor computes changes, so cached
# reference statistics of the old definition are not reused.
CLIP_FEATURES = "clip-image-embeds-l2normalized/v1"
INCEPTION_FEATURES = "inception-v3-fid-pool3-2048/tf1-bilinear-299/v1"
CACHE_FORMAT = "t2ialign.fidelity.reference_stats"
CACHE_VERSION = 1

FeatureFn = Callable[[list[np.ndarray]], np.ndarray]  # N images (H, W, 3) uint8 -> (N, D) features


# --- the Fréchet distance ----------------------------------------------------------------------------------


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((S1 S2)^{1/2}) of symmetric PSD S1, S2 (D, D), as Tr((B^T S2 B)^{1/2}) with S1 = B B^T.

    S1 S2 has the eigenvalues of B^T S2 B, a symmetric PSD matrix, so a singular S1 (fewer samples than
    dimensions) gives no complex parts, unlike a general ``sqrtm(S1 @ S2)``. B = V_r diag(w_r)^{1/2} keeps
    the r eigenvalues of S1 above its numerical rank tolerance (max w * D * eps): B^T S2 B is (r, r), so
    with r << D (2048-d Inception features of a few hundred images) only one (D, D) eigensolve remains.
    """
    w, v = np.linalg.eigh(s1)  # ascending
    keep = w > w.max(initial=0.0) * s1.shape[0] * np.finfo(np.float64).eps
    b = v[:, keep] * np.sqrt(w[keep])  # (D, r)
    m = b.T @ s2 @ b  # (r, r)
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, the FID formula):

        ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^{1/2})

    mu: (D,), sigma: (D, D); computed in float64 (see ``trace_sqrt_product`` for the matrix square root).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shapes do not match: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}"
        )
    for name, x in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.isfinite(x).all():
            raise ValueError(f"{name} has non-finite values")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    return max(fd, 0.0)  # the exact value is >= 0; only round-off of equal sets goes below


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """(mu (D,), sigma (D, D)) in float64 of (N, D) features; sigma is the unbiased covariance (N - 1)."""
    x = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else features
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need (N, D) features with N >= 2 to estimate a covariance, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features have non-finite values")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


# --- images ------------------------------------------------------------------------------------------------


def as_uint8(image) -> np.ndarray:
    """(H, W, 3) uint8 array of a PIL image or array."""
    a = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {a.dtype} of shape {a.shape}")
    return a


def images_digest(images: Sequence[np.ndarray]) -> str:
    """sha256 of the multiset of images: each image's sha256 (of its shape and uint8 RGB pixels), sorted,
    so the order of the set does not matter (statistics do not depend on it)."""
    per_image = sorted(hashlib.sha256(f"{a.shape}".encode() + a.tobytes()).hexdigest() for a in images)
    return hashlib.sha256("\n".join(per_image).encode()).hexdigest()


def render_reference(prompts: Sequence[str], reference_seed: int = 0, size: int = 64, layout: str = "random"):
    """(images, pairs): one world render per prompt occurrence; the k-th occurrence of a prompt is rendered
    with seed ``reference_seed + k``, so n generated images of a prompt get n different renders. ``layout``
    places the shapes as the base model's pre-training data did (``finetune.data.world_layout``)."""
    seen: Counter = Counter()
    images, pairs = [], []
    for p in prompts:
        seed = reference_seed + seen[p]
        seen[p] += 1
        images.append(render(p, seed=seed, size=size, layout=layout).image)
        pairs.append([p, seed])
    return images, pairs


# --- FD on CLIP features -----------------------------------------------------------------------------------


def clip_feature_fingerprint(clip) -> str:
    return f"{CLIP_FEATURES}:{clip_fingerprint(clip)}"


def clip_image_features(images: Sequence, clip, processor) -> np.ndarray:
    """(N, D) float64 L2-normalized CLIP image embeddings (the embeddings the reward model reads)."""
    return embed_images(clip, processor, list(images)).double().numpy()


def fd_clip(images_a: Sequence, images_b: Sequence, clip, processor) -> float:
    """FD between the CLIP image embeddings of two image sets (each at least 2 images)."""
    mu_a, s_a = feature_stats(clip_image_features(images_a, clip, processor))
    mu_b, s_b = feature_stats(clip_image_features(images_b, clip, processor))
    return frechet_distance(mu_a, s_a, mu_b, s_b)


# --- reference statistics cache ----------------------------------------------------------------------------


def cached_stats(
    images: Sequence[np.ndarray],
    features: FeatureFn,
    fingerprint: str,
    cache_dir: str | Path,
    source: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(mu, sigma, meta) of ``features(images)``, read from ``cache_dir`` when computed before for the same
    images (by content) and the same feature extractor (by ``fingerprint``); ``meta["cache_hit"]`` says
    which. ``source`` (JSON-able: how the images were made) is recorded in the JSON, not hashed.

    The tensors are written first and the JSON last, each atomically: a JSON names only complete tensors.
    """
    images = [as_uint8(a) for a in images]
    digest = images_digest(images)
    key = hashlib.sha256(f"{CACHE_FORMAT}/{CACHE_VERSION}\n{fingerprint}\n{digest}".encode()).hexdigest()[:24]
    cache_dir = Path(cache_dir)
    tensor_path, meta_path = cache_dir / f"ref-{key}.safetensors", cache_dir / f"ref-{key}.json"
    if meta_path.is_file():
        mu, sigma, meta = _read_cached(tensor_path, meta_path, key, fingerprint, digest, len(images))
        return mu, sigma, {**meta, "cache_hit": True}
    mu, sigma = feature_stats(features(images))
    meta = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "key": key,
        "hashed": "sha256 of the sorted per-image sha256s of (H, W, 3) uint8 RGB pixels (with their shape)",
        "images_sha256": digest,
        "n": len(images),
        "dim": int(mu.shape[0]),
        "feature_extractor": fingerprint,
        "source": source or {},
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(
        tensor_path, save_numpy({"mu": np.ascontiguousarray(mu), "sigma": np.ascontiguousarray(sigma)})
    )
    atomic_write(meta_path, json.dumps(meta, indent=1).encode())
    return mu, sigma, {**meta, "cache_hit": False}


def _read_cached(tensor_path: Path, meta_path: Path, key: str, fingerprint: str, digest: str, n: int):
    """(mu, sigma, meta) of a cache entry, checked against what it claims to be; a mismatch is an error."""
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"reference statistics {meta_path} are not valid JSON ({e}); delete the file") from e
    expected = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key}
    expected.update(feature_extractor=fingerprint, images_sha256=digest, n=n)
    wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
    if wrong:
        raise ValueError(f"reference statistics {meta_path} do not match their key ({wrong}); delete them")
    if not tensor_path.is_file():
        raise ValueError(f"{meta_path} exists but {tensor_path} does not; delete both to recompute")
    t = load_numpy(str(tensor_path))
    mu, sigma = t.get("mu"), t.get("sigma")
    d = meta["dim"]
    if mu is None or sigma is None or mu.shape != (d,) or sigma.shape != (d, d):
        raise ValueError(f"{tensor_path} does not hold mu ({d},) and sigma ({d}, {d}); delete both files")
    return mu, sigma, meta


# --- Inception-v3 for FID ----------------------------------------------------------------------------------
# The FID variant of Inception-v3 (the 2015-12-05 TensorFlow graph), ported from torch-fidelity's
# feature_extractor_inceptionv3.py (itself from pytorch-fid; Apache License 2.0). Module names match both
# projects' converted weight files, so either loads with strict key checking.


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):  # TensorFlow's average pool leaves the padding out of the average
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """``max_pool``: the last block of the TensorFlow graph max-pools its pool branch (Mixed_7c); the one
    before average-pools (Mixed_7b)."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


def resize_bilinear_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to (size, size) as TensorFlow 1.x's ``resize_bilinear`` with
    align_corners=False (the FID reference): output pixel i samples input coordinate i * in / out, no
    half-pixel offset, edge-clamped."""

    def axis(n_in: int):
        # float32 positions, as TensorFlow computes them (float64 moves values by up to 1e-3 of a level)
        pos = torch.arange(size, dtype=torch.float32) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = pos.long().clamp(max=n_in - 1)
        return lo, (lo + 1).clamp(max=n_in - 1), (pos - lo.float()).to(x.dtype)

    ylo, yhi, dy = axis(x.shape[2])
    xlo, xhi, dx = axis(x.shape[3])
    top = x[:, :, ylo][..., xlo] + (x[:, :, ylo][..., xhi] - x[:, :, ylo][..., xlo]) * dx
    bottom = x[:, :, yhi][..., xlo] + (x[:, :, yhi][..., xhi] - x[:, :, yhi][..., xlo]) * dx
    return top + (bottom - top) * dy[:, None]


class FIDInceptionV3(nn.Module):
    """Inception-v3 of the FID reference: uint8 (B, 3, H, W) -> (B, 2048) pool3 features.

    Images are resized to 299x299 as TensorFlow 1.x did and scaled to [-1, 1]. ``fc`` (1008 classes) is
    kept only so that the standard weight files load with strict key checking.
    """

    INPUT_SIZE = 299

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # BatchNorm must keep the stored statistics
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 images (B, 3, H, W), got {x.dtype} {tuple(x.shape)}")
        x = resize_bilinear_tf1(x.float(), self.INPUT_SIZE)  # (B, 3, 299, 299)
        x = (x - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b):
            x = block(x)
        for block in (
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)  # (B, 2048, 8, 8) at the end
        return x.mean(dim=(2, 3))  # (B, 2048)


def load_inception(path: str | Path) -> FIDInceptionV3:
    """The FID Inception-v3 from a local weights file: a PyTorch state dict (``.pth``/``.pt``, loaded with
    ``weights_only=True``) or ``.safetensors``. Keys must match exactly."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"no Inception-v3 weights at {p}: give a local file (e.g. torch-fidelity's "
            "weights-inception-2015-12-05-6726825d.pth); nothing is downloaded"
        )
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # a pickle with code in it, or not a torch file at all
            raise ValueError(f"{p} is not a PyTorch state dict loadable with weights_only=True: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{p} does not hold a state dict of tensors")
    model = FIDInceptionV3()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{p} is not an FID Inception-v3 state dict: {e}") from e
    return model


def inception_feature_fingerprint(path: str | Path) -> str:
    return f"{INCEPTION_FEATURES}:{file_sha256(path)[:16]}"


@torch.no_grad()
def inception_features(model: FIDInceptionV3, images: Sequence, batch_size: int = 32) -> np.ndarray:
    """(N, 2048) float64 pool3 features of images (PIL or (H, W, 3) uint8), in batches."""
    out = []
    for i in range(0, len(images), batch_size):
        chunk = np.stack([as_uint8(im) for im in images[i : i + batch_size]])  # (B, H, W, 3)
        out.append(model(torch.from_numpy(chunk).permute(0, 3, 1, 2).contiguous()).double())
    return torch.cat(out).numpy() if out else np.empty((0, 2048))


# --- the evaluation stage's entry point --------------------------------------------------------------------


def fidelity_report(
    generated: Sequence[tuple[str, object]],
    clip,
    processor,
    cache_dir: str | Path,
    reference_seed: int = 0,
    inception_path: str | Path | None = None,
    layout: str = "random",
) -> dict:
    """Fidelity of generated images against world renders of the same prompts (paper Table 2's FID), placed
    by ``layout``: the base model's pre-training distribution (world v7 draws dice faces).

    generated: (prompt, image) pairs, images PIL or (H, W, 3) uint8, all of one square size; the reference
    set has one render per pair at that size (see ``render_reference``). Returns
    ``{"fd_clip", "n", "reference", "fid_inception", "feature_extractors"}``; ``fid_inception`` is None
    without ``inception_path``.
    """
    if len(generated) < 2:
        raise ValueError(f"need at least 2 generated images, got {len(generated)}")
    prompts = [p for p, _ in generated]
    images = [as_uint8(im) for _, im in generated]
    sizes = {im.shape[:2] for im in images}
    if len(sizes) != 1 or (side := images[0].shape[0]) != images[0].shape[1]:
        raise ValueError(f"generated images must share one square size, got sizes {sorted(sizes)}")
    ref_images, pairs = render_reference(prompts, reference_seed, size=side, layout=layout)
    source = {"renderer": "t2ialign.world.render", "reference_seed": reference_seed, "size": side}
    if layout != "random":  # absent: random, so the caches and reports made before layouts stay as they were
        source["layout"] = layout
    source["pairs"] = pairs

    clip_fp = clip_feature_fingerprint(clip)
    mu_r, s_r, meta = cached_stats(
        ref_images, lambda ims: clip_image_features(ims, clip, processor), clip_fp, cache_dir, source
    )
    mu_g, s_g = feature_stats(clip_image_features(images, clip, processor))
    report = {
        "fd_clip": frechet_distance(mu_g, s_g, mu_r, s_r),
        "n": len(images),
        "reference": {
            "renderer": source["renderer"],
            "reference_seed": reference_seed,
            "size": side,
            "layout": layout,
            "n": meta["n"],
            "images_sha256": meta["images_sha256"],
            "cache": {"clip": {"key": meta["key"], "hit": meta["cache_hit"]}},
        },
        "fid_inception": None,
        "feature_extractors": {"clip": clip_fp, "inception": None},
    }
    if inception_path is not None:
        inception = load_inception(inception_path)
        inc_fp = inception_feature_fingerprint(inception_path)
        mu_r, s_r, meta = cached_stats(
            ref_images, lambda ims: inception_features(inception, ims), inc_fp, cache_dir, source
        )
        mu_g, s_g = feature_stats(inception_features(inception, images))
        report["fid_inception"] = frechet_distance(mu_g, s_g, mu_r, s_r)
        report["reference"]["cache"]["inception"] = {"key": meta["key"], "hit": meta["cache_hit"]}
        report["feature_extractors"]["inception"] = inc_fp
    return report
