"""Energy networks: the CIFAR-10, CelebA/LSUN-128 and MNIST residual nets, multiscale heads,
and an MLP for 2-D data. Every net returns energies of shape (B, S): S = 3 heads (full, half
and quarter resolution) when multiscale, else S = 1. Samplers use the sum over heads, losses
the mean (reference description §1.5).

Architectures are written as a stem width plus a list of stages, so the half- and quarter-
resolution heads are visibly the full net with its deepest levels removed, which is what the
authors' code builds (ref §3.2-3.3) and what the parameter counts of the paper's models
(≈ 6.6 M for CIFAR-10, ≈ 27 M for CelebA-128) correspond to. The paper's appendix A.1 words it
as removing the *first* downsampling levels ("all layers before and including the first
down-sampled residual block removed"); read that way the CIFAR-10 model has about twice the
parameters. Both are here: `model.multiscale_layout = "code"` (default, the reference's
counts) or `"paper"` (A.1 read literally, `paper_heads`).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ebm_jax.models.layers import (ResBlock, SelfAttention, avg_pool_down, conv, dense,
                                   swish)

ATTN = "attn"
# A stage: (block features, downsample, rescale) or ATTN.
Stage = tuple[int, bool, bool] | str


def resnet32_heads(f: int, attention: bool) -> list[tuple[int, list[Stage]]]:
  """CIFAR-10 net, paper Fig. 11a / ref §3.2: (stem width, stages) of the 32², 16², 8² heads."""
  attn = [ATTN] if attention else []
  level1 = [(f, False, False), (f, True, False)]
  level2 = [(f, False, False), (f, True, True)]
  level3 = [(2 * f, False, False), (2 * f, True, True)]
  level4 = [(4 * f, False, False), (4 * f, True, True)]
  return [(f, level1 + level2 + attn + level3 + level4),  # -> 8F @ 2x2, attention at 8x8
          (f, level1 + level2 + level3),  # half resolution -> 4F @ 2x2
          (f, level1 + level2)]  # quarter resolution -> 2F @ 2x2


def resnet128_heads(f: int, attention: bool) -> list[tuple[int, list[Stage]]]:
  """CelebA-HQ / LSUN 128² net, paper Fig. 11b / ref §3.3."""
  attn = [ATTN] if attention else []
  main = [(f // 2, True, True), (f, True, False), (f, True, False), (f, True, True),
          (2 * f, False, False), (2 * f, True, True)] + attn + [
              (4 * f, False, False), (4 * f, True, True)]  # attention at 4x4, -> 8F @ 2x2
  mid = [(f, True, False), (f, True, False), (f, True, False), (f, True, True),
         (2 * f, False, False), (2 * f, True, True)]  # 64² -> 4F @ 2x2
  small = [(f, True, False), (f, True, False), (f, True, False), (f, True, True)]  # 32² -> 2F
  return [(f // 2, main), (f, mid), (f, small)]


def mnist_heads(f: int, attention: bool) -> list[tuple[int, list[Stage]]]:
  """MNIST net, ref §3.4: three downsampling blocks, single scale, no attention."""
  del attention
  return [(f, [(f, True, True), (2 * f, True, True), (4 * f, True, True)])]


def paper_heads(heads: list[tuple[int, list[Stage]]]) -> list[tuple[int, list[Stage]]]:
  """The paper's A.1 reading of the multiscale heads: the k-th extra head is the full-resolution
  net with every layer up to and including its k-th downsampling block removed, and a new stem
  conv to the channels that block put out (the input is an image again)."""
  stem, stages = heads[0]
  out = [(stem, list(stages))]
  downs = [i for i, s in enumerate(stages) if s != ATTN and s[1]]
  for k in range(1, len(heads)):
    i = downs[k - 1]
    features, _, rescale = stages[i]
    out.append((2 * features if rescale else features, list(stages[i + 1:])))
  return out


ARCHITECTURES = {"resnet32": resnet32_heads, "resnet128": resnet128_heads,
                 "mnist": mnist_heads}


class ResNetHead(nn.Module):
  """stem conv + swish, residual stages, swish, global mean, Linear -> one energy per image
  (or `outputs` > 1 numbers per image: JEM's class logits)."""
  stem: int
  stages: Sequence[Stage]
  norm: str = "instance_group"
  conv: str = "ws"
  conditional: bool = False
  dtype: Any = jnp.float32
  outputs: int = 1

  @nn.compact
  def __call__(self, x, y=None, train: bool = False):
    h = swish(conv(self.stem, x.shape[-1], dtype=self.dtype)(x.astype(self.dtype)))
    for stage in self.stages:
      if stage == ATTN:
        h = SelfAttention(self.dtype)(h)
      else:
        features, down, rescale = stage
        h = ResBlock(features, down, rescale, self.norm, self.conv, self.conditional,
                     self.dtype)(h, y, train)
    h = swish(h).mean(axis=(1, 2))
    out = dense(self.outputs, h.shape[-1])(h.astype(jnp.float32))
    return out[:, 0] if self.outputs == 1 else out


class ResNetEnergy(nn.Module):
  """One or three heads; the k-th head sees the image average-pooled k times (ref §3.1)."""
  heads: Sequence[tuple[int, Sequence[Stage]]]
  norm: str = "instance_group"
  conv: str = "ws"
  conditional: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, y=None, train: bool = False):
    energies = []
    for i, (stem, stages) in enumerate(self.heads):
      energies.append(ResNetHead(stem, tuple(stages), self.norm, self.conv, self.conditional,
                                 self.dtype, name=f"head{i}")(x, y, train))
      x = avg_pool_down(x)
    return jnp.stack(energies, axis=-1)  # (B, S), float32


class JEMEnergy(nn.Module):
  """JEM (Grathwohl et al. 2020): a classifier f whose logits define the energies
  E(x, y) = −f(x)[y] (y one-hot) and E(x) = −logsumexp_y f(x)[y]. Single scale; no FiLM."""
  stem: int
  stages: Sequence[Stage]
  num_classes: int
  norm: str = "instance_group"
  conv: str = "ws"
  dtype: Any = jnp.float32

  def setup(self):
    self.classifier = ResNetHead(self.stem, tuple(self.stages), self.norm, self.conv, False,
                                 self.dtype, outputs=self.num_classes)

  def logits(self, x, train: bool = False):
    return self.classifier(x, None, train)

  def __call__(self, x, y=None, train: bool = False):
    f = self.logits(x, train)
    if y is None:
      return -jax.nn.logsumexp(f, axis=-1, keepdims=True)  # (B, 1)
    return -jnp.sum(f * y.astype(f.dtype), axis=-1, keepdims=True)


class MLPEnergy(nn.Module):
  """A swish MLP energy for 2-D (or any flat) data; labels, if any, are concatenated."""
  hidden: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, y=None, train: bool = False):
    del train
    h = x if y is None else jnp.concatenate([x, y.astype(x.dtype)], axis=-1)
    h = h.astype(self.dtype)
    for width in self.hidden:
      h = swish(dense(width, h.shape[-1], dtype=self.dtype)(h))
    return dense(1, h.shape[-1])(h.astype(jnp.float32))  # (B, 1)
