"""Energy nets: shapes, parameter counts, conditioning, spectral-norm state, building blocks."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebm_jax.configs.default import get_config
from ebm_jax.models import SPECTRAL, check_input_shape, make_model
from ebm_jax.models.layers import ResBlock, SelfAttention, WSConv


def _model_cfg(name, features=8, multiscale=True, **kw):
  c = get_config().model
  c.name, c.features, c.multiscale = name, features, multiscale
  for k, v in kw.items():
    c[k] = v
  return c


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,size,channels,multiscale,num_classes,heads", [
    ("resnet32", 32, 3, True, 0, 3),
    ("resnet32", 32, 3, False, 0, 1),
    ("resnet32", 16, 1, True, 10, 3),
    ("resnet128", 64, 3, True, 2, 3),
    ("mnist", 28, 1, False, 0, 1),
    ("mnist", 8, 1, False, 10, 1),
])
def test_output_shapes(name, size, channels, multiscale, num_classes, heads):
  cfg = _model_cfg(name, multiscale=multiscale)
  model = make_model(cfg, (size, size, channels), num_classes)
  x = jax.random.uniform(jax.random.key(0), (2, size, size, channels))
  y = jax.nn.one_hot(jnp.array([0, 1]), num_classes) if num_classes else None
  variables = model.init(jax.random.key(1), x, y)
  e = model.apply(variables, x, y)
  assert e.shape == (2, heads) and e.dtype == jnp.float32
  assert np.all(np.isfinite(e))
  film = [p for p in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
          if "FiLM" in jax.tree_util.keystr(p[0])]
  # Conditional nets carry FiLM parameters in every block; unconditional nets have none.
  assert bool(film) == (num_classes > 0)
  if num_classes:  # the label changes the energy
    e_other = model.apply(variables, x, y[::-1])
    assert not np.allclose(e, e_other)


def test_mlp_energy_shape():
  model = make_model(_model_cfg("mlp"), (2,))
  x = jnp.ones((5, 2))
  assert model.apply(model.init(jax.random.key(0), x), x).shape == (5, 1)


# Counts of the paper's models at full width (F=64 CIFAR-10, F=128 CelebA-128, multiscale).
# Reference figures: ≈ 6.6 M and ≈ 27 M. We get 6,564,196 unconditional / 6,643,044 with
# 10-class FiLM (the reference builds its FiLM layers even for unconditional models, which is
# where its 6.64 M comes from) and 27,053,700 for CelebA: all within 1 %.
@pytest.mark.parametrize("name,size,features,num_classes,expected,reference", [
    ("resnet32", 32, 64, 0, 6_564_196, 6.6e6),
    ("resnet32", 32, 64, 10, 6_643_044, 6.6e6),
    ("resnet128", 128, 128, 0, 27_053_700, 27e6),
])
def test_parameter_counts(name, size, features, num_classes, expected, reference):
  model = make_model(_model_cfg(name, features), (size, size, 3), num_classes)
  x = jnp.zeros((1, size, size, 3))
  y = jnp.zeros((1, num_classes)) if num_classes else None
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, y))
  n = _count(shapes["params"])
  assert n == expected
  assert abs(n - reference) / reference < 0.03


# The paper's appendix A.1 read literally ("all layers before and including the first
# down-sampled residual block removed") gives heads that are the full net minus its first
# levels: 13,987,110 (CIFAR-10) and 58,250,246 (CelebA-128) parameters, 2.1x the reference
# figures, because the cut heads keep the widest, deepest blocks. That difference is why the
# default layout is the reference code's (heads keep the first levels), which matches 6.6 M / 27 M.
@pytest.mark.parametrize("name,size,features,expected", [
    ("resnet32", 32, 64, (4_859_234, 4_674_082, 4_453_794)),
    ("resnet128", 128, 128, (19_661_954, 19_515_778, 19_072_514)),
])
def test_paper_multiscale_layout(name, size, features, expected):
  model = make_model(_model_cfg(name, features, multiscale_layout="paper"), (size, size, 3))
  x = jnp.zeros((1, size, size, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
  assert tuple(_count(shapes[f"head{i}"]) for i in range(3)) == expected
  # head k sees the image pooled k times and starts where the full net's k-th down block ends
  small = make_model(_model_cfg(name, 8, multiscale_layout="paper"), (size, size, 3))
  xs = jax.random.uniform(jax.random.key(0), (2, size, size, 3))
  variables = small.init(jax.random.key(1), xs)
  assert small.apply(variables, xs).shape == (2, 3)
  stem = lambda i: variables["params"][f"head{i}"]["Conv_0"]["kernel"].shape[-1]
  assert (stem(0), stem(1), stem(2)) == ((8, 8, 16) if name == "resnet32" else (4, 8, 8))


def test_spectral_norm_state_updates_only_when_asked():
  cfg = _model_cfg("mnist", conv="spectral")
  model = make_model(cfg, (8, 8, 1))
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
  variables = model.init(jax.random.key(1), x)
  assert SPECTRAL in variables
  e_eval, new_eval = model.apply(variables, x, train=False, mutable=[SPECTRAL])
  same = jax.tree.map(np.array_equal, variables[SPECTRAL], new_eval[SPECTRAL])
  assert all(jax.tree.leaves(same))
  _, new_train = model.apply(variables, x, train=True, mutable=[SPECTRAL])
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), variables[SPECTRAL],
                         new_train[SPECTRAL])
  assert any(jax.tree.leaves(changed))
  assert e_eval.shape == (2, 1)


def test_ws_conv_standardises_each_filter():
  layer = WSConv(4)
  x = jax.random.normal(jax.random.key(0), (1, 5, 5, 3))
  params = layer.init(jax.random.key(1), x)["params"]
  w = np.asarray(params["kernel"], np.float64)
  w_std = (w - w.mean(axis=(0, 1, 2))) / (w.std(axis=(0, 1, 2), ddof=1) + 1e-5)
  expected = jax.lax.conv_general_dilated(
      x, jnp.asarray(w_std, jnp.float32), (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["bias"]
  np.testing.assert_allclose(layer.apply({"params": params}, x), expected, atol=1e-5)
  # PyTorch-default init: U(±1/sqrt(fan_in)) for kernel and bias, fan_in = 3*3*3.
  bound = 1 / np.sqrt(27)
  assert np.abs(w).max() <= bound and np.abs(params["bias"]).max() <= bound
  assert np.abs(w).max() > 0.8 * bound  # uniform over the full range, not a narrower init


def test_resblock_has_residual_add_and_downsamples():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  block = ResBlock(16, norm="none", conv="plain")
  params = block.init(jax.random.key(1), x)["params"]
  zeroed = jax.tree.map(jnp.zeros_like, params)  # convs output 0 -> swish(0) = 0 -> out = x
  np.testing.assert_allclose(block.apply({"params": zeroed}, x), x)
  down = ResBlock(16, downsample=True, rescale=True)
  out = down.apply(down.init(jax.random.key(2), x), x)
  assert out.shape == (2, 4, 4, 32)
  out7 = down.apply(down.init(jax.random.key(2), x[:, :7, :7]), x[:, :7, :7])
  assert out7.shape == (2, 4, 4, 32)  # ceil(H/2) with pad 1, as PyTorch's avg_pool2d


def test_attention_starts_as_identity_and_mixes_positions():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 16))
  attn = SelfAttention()
  variables = attn.init(jax.random.key(1), x)
  np.testing.assert_allclose(attn.apply(variables, x), x)  # gamma = 0 at init
  variables = flax.core.unfreeze(variables)
  variables["params"]["gamma"] = jnp.ones(())
  x2 = x.at[:, 0, 0].add(5.0)  # a change at one position moves the others' outputs
  delta = attn.apply(variables, x2) - attn.apply(variables, x)
  assert np.abs(np.asarray(delta)[:, 3, 3]).max() > 1e-4


@pytest.mark.parametrize("name,shape,match", [
    ("resnet32", (8, 8, 3), "too small"),
    ("resnet128", (32, 32, 3), "too small"),
    ("resnet32", (32, 16, 3), "square"),
    ("mlp", (8, 8, 1), "flat data"),
    ("resnet32", (2,), "square"),
])
def test_unsupported_shapes_are_named(name, shape, match):
  with pytest.raises(ValueError, match=match):
    check_input_shape(_model_cfg(name), shape)


# ------------------------------------------------------------------- IGEBM's nets (models/igebm.py)


@pytest.mark.parametrize("shape,net", [((28, 28, 1), "IGEBMMnist"), ((32, 32, 3), "IGEBMResNet")])
def test_igebm_nets_follow_the_released_code(shape, net):
  model = make_model(_model_cfg("igebm", 16, multiscale=False), shape)
  assert type(model).__name__ == net
  x = jax.random.uniform(jax.random.key(0), (3,) + shape)
  v = model.init(jax.random.key(1), x)
  params = flax.traverse_util.flatten_dict(v["params"], sep="/")
  spectral = flax.traverse_util.flatten_dict(v[SPECTRAL], sep="/")
  assert not [k for k in params if "norm" in k.lower() or "scale" in k]  # no normalisation
  kernels = [k for k in params if k.endswith("kernel")]
  normed = {k.rsplit("/", 1)[0] for k in spectral}
  plain = [k for k in kernels if k.rsplit("/", 1)[0] not in normed]
  assert plain == ["Dense_0/kernel"]  # only the final energy layer is not spectral-normed
  convs = [k for k in kernels if params[k].ndim == 4]
  assert not [k.replace("kernel", "bias") for k in convs if k.replace("kernel", "bias") in params]
  # the blocks' second convs start near zero and are only ever shrunk (w / σ · min(σ, 1))
  second = [p for p in normed if "SmartResBlock" in p and p.endswith("SNConv_1")]
  assert len(second) == (6 if net == "IGEBMResNet" else 0)
  for path in second:
    assert float(np.abs(np.asarray(params[path + "/kernel"])).max()) < 1e-8
  e = model.apply(v, x)
  assert e.shape == (3, 1) and bool(jnp.all(jnp.isfinite(e)))


def test_an_igebm_res_block_starts_as_its_shortcut():
  from ebm_jax.models.igebm import SmartResBlock  # pylint: disable=import-outside-toplevel
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  block = SmartResBlock(16, downsample=True)
  v = block.init(jax.random.key(1), x)
  out = block.apply(v, x)
  pooled = x.reshape(2, 4, 2, 4, 2, 16).mean(axis=(2, 4))
  np.testing.assert_allclose(out, jax.nn.leaky_relu(pooled, 0.2), atol=1e-6)


def test_igebm_spectral_norm_divides_by_the_top_singular_value_or_only_shrinks():
  from ebm_jax.models.igebm import SNConv  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  q1, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  q2, _ = np.linalg.qr(rng.normal(size=(4, 4)))
  x = jnp.asarray(rng.normal(size=(2, 1, 1, 6)), jnp.float32)
  for top, lower_bound in ((3.0, False), (0.5, False), (3.0, True), (0.5, True)):
    w = (q1[:, :4] * np.array([top, 0.3, 0.2, 0.1])) @ q2  # singular values top, .3, .2, .1
    layer = SNConv(4, kernel=1, lower_bound=lower_bound)  # a 1×1 conv: a dense map of channels
    state = layer.init(jax.random.key(0), x)[SPECTRAL]
    params = {"kernel": jnp.asarray(w.reshape(1, 1, 6, 4), jnp.float32)}
    for _ in range(20):  # one power iteration per training forward
      _, upd = layer.apply({"params": params, SPECTRAL: state}, x, train=True,
                           mutable=[SPECTRAL])
      state = upd[SPECTRAL]
    out = layer.apply({"params": params, SPECTRAL: state}, x)
    scale = top / min(top, 1.0) if lower_bound else top  # w / σ · min(σ, 1), or w / σ
    np.testing.assert_allclose(np.asarray(out)[:, 0, 0], np.asarray(x)[:, 0, 0] @ (w / scale),
                               rtol=1e-4, atol=1e-5)
