"""Tests of ebm_jax.data: offline sources on real data, tfds paths under tfds.testing.mock_data.

Everything runs offline. TensorFlow is imported only by the tfds tests (≈ 5 s once).
"""

import gzip
import os

import numpy as np
import pytest
from sklearn import datasets as sk_datasets

from ebm_jax.configs import default
from ebm_jax import data


def _cfg(**overrides):
  cfg = default.get_config().data
  cfg.download = False  # adds the field if configs/default.py does not have it yet
  for key, value in overrides.items():
    setattr(cfg, key, value)
  return cfg


def _take(stream, n):
  return [next(stream) for _ in range(n)]


def _assert_one_hot(label, num_classes):
  assert label.dtype == np.float32 and label.shape[1] == num_classes
  assert set(np.unique(label)) <= {0.0, 1.0}
  np.testing.assert_array_equal(label.sum(axis=1), 1.0)


def _keys(images):
  return [x.tobytes() for x in images]


# ====================================================================== digits


def test_digits_batches_and_labels_match_sklearn():
  cfg = _cfg(name="digits", image_size=8, channels=1, attribute="class")
  info = data.get_info(cfg)
  assert (info.shape, info.num_classes, info.levels, info.num_examples) == ((8, 8, 1), 10, 17,
                                                                          1500)
  batch = next(data.make_stream(cfg, batch_size=64, seed=0))
  assert batch["image"].shape == (64, 8, 8, 1) and batch["image"].dtype == np.uint8
  assert batch["image"].max() == 16  # real digits use the full 0..16 range, no rescaling
  _assert_one_hot(batch["label"], 10)
  digits = sk_datasets.load_digits()
  target = dict(zip(_keys(digits.images.astype(np.uint8)[..., None]), digits.target))
  for image, label in zip(batch["image"], batch["label"]):
    assert target[image.tobytes()] == label.argmax()  # each image keeps its own label


def test_digits_resized_rgb_unconditional():
  cfg = _cfg(name="digits", image_size=16, channels=3, attribute="")
  info = data.get_info(cfg)
  assert info.num_classes == 0 and info.class_names == tuple("0123456789")
  batch = next(data.make_stream(cfg, batch_size=32, seed=1))
  image = batch["image"]
  assert image.shape == (32, 16, 16, 3) and image.dtype == np.uint8
  assert batch["label"].shape == (32, 0) and batch["label"].dtype == np.float32
  assert 12 <= image.max() <= 16  # interpolation stays within the 17 levels
  np.testing.assert_array_equal(image[..., 0], image[..., 2])  # grey -> RGB repeats


# ====================================================================== fashion_mnist


@pytest.mark.skipif(not os.path.isdir(data.FASHION_MNIST_DIR),
                    reason="needs Debian's dataset-fashion-mnist")
def test_fashion_mnist_real_files():
  cfg = _cfg(name="fashion_mnist", image_size=28, channels=1, attribute="class", split="test")
  info = data.get_info(cfg)
  assert (info.shape, info.num_classes, info.levels, info.num_examples) == ((28, 28, 1), 10, 256,
                                                                          10_000)
  assert data.get_info(_cfg(name="fashion_mnist")).num_examples == 60_000
  batch = next(data.make_stream(cfg, batch_size=32, seed=0))
  assert batch["image"].shape == (32, 28, 28, 1) and batch["image"].dtype == np.uint8
  assert batch["image"].max() > 200
  _assert_one_hot(batch["label"], 10)
  # Labels checked against an independent read of the IDX files (16- and 8-byte headers).
  folder = data.FASHION_MNIST_DIR
  with gzip.open(os.path.join(folder, "t10k-images-idx3-ubyte.gz")) as f:
    raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
  with gzip.open(os.path.join(folder, "t10k-labels-idx1-ubyte.gz")) as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)
  target = dict(zip(_keys(raw), labels))
  assert [target[k] for k in _keys(batch["image"])] == list(batch["label"].argmax(1))

  rgb = next(data.make_stream(_cfg(name="fashion_mnist", image_size=32, channels=3),
                              batch_size=8, seed=0))
  assert rgb["image"].shape == (8, 32, 32, 3) and rgb["label"].shape == (8, 0)
  np.testing.assert_array_equal(rgb["image"][..., 0], rgb["image"][..., 1])


def test_mnist_from_idx_files_through_data_path(tmp_path):
  from conftest import write_fake_fashion_mnist  # pylint: disable=import-outside-toplevel
  from ebm_jax.configs import mnist  # pylint: disable=import-outside-toplevel
  folder = write_fake_fashion_mnist(str(tmp_path / "mnist"))  # the same four IDX files
  config = mnist.get_config()
  config.data.path = folder
  cfg = data.as_settings(config.data)
  assert not data.from_tfds(cfg)
  assert data.from_tfds(data.as_settings(config.data, path=str(tmp_path)))  # a tfds data_dir
  assert data.from_tfds(data.as_settings(config.data, path=""))
  info = data.get_info(cfg)
  assert (info.shape, info.num_classes, info.levels) == ((28, 28, 1), 0, 256)
  with gzip.open(os.path.join(folder, "t10k-images-idx3-ubyte.gz")) as f:
    raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
  test = data.load_arrays(cfg, 10_000, split="test")["image"]
  assert len(test) == len(raw) and sorted(_keys(test)) == sorted(_keys(raw))
  labelled = data.as_settings(config.data, attribute="class")
  batch = next(data.make_stream(labelled, batch_size=16, seed=0))
  _assert_one_hot(batch["label"], 10)
  with pytest.raises(data.DataError, match="MNIST file"):
    os.remove(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"))
    data.get_info(data.as_settings(config.data, split="test"))


# ====================================================================== shapes


def test_shapes_batches_and_attributes_decode():
  b = 64
  batches = {a: next(data.make_stream(_cfg(name="shapes", attribute=a), batch_size=b, seed=3))
             for a in data.SHAPE_ATTRIBUTES}
  images = batches["shape"]["image"]
  assert images.shape == (b, 32, 32, 3) and images.dtype == np.uint8
  for attribute, values in data.SHAPE_ATTRIBUTES.items():
    _assert_one_hot(batches[attribute]["label"], len(values))
    # The example order does not depend on the attribute, so all labels describe `images`.
    np.testing.assert_array_equal(batches[attribute]["image"], images)
  label = {a: [data.SHAPE_ATTRIBUTES[a][i] for i in batches[a]["label"].argmax(1)]
           for a in data.SHAPE_ATTRIBUTES}
  channel_pattern = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1),
                     "yellow": (1, 1, 0)}
  quadrant = {(0, 0): "top_left", (0, 1): "top_right", (1, 0): "bottom_left",
              (1, 1): "bottom_right"}
  for i in range(b):
    image = images[i].astype(np.float32)
    cover = image.max(-1) / 255
    solid = image[cover > 0.9]
    assert tuple((solid.mean(0) > 128).astype(int)) == channel_pattern[label["color"][i]]
    rows, cols = np.nonzero(cover)
    cy, cx = np.average(rows, weights=cover[rows, cols]), np.average(cols, weights=cover[rows,
                                                                                      cols])
    assert quadrant[(int(cy >= 16), int(cx >= 16))] == label["position"][i]
    area = cover.sum()
    assert (area > 42) == (label["size"][i] == "large"), (area, label["size"][i])
    # A triangle (apex up) holds 3/4 of its mass below the middle of its rows.
    mid = (rows.min() + rows.max()) / 2
    below = cover[int(np.ceil(mid)):].sum() / max(cover[:int(np.floor(mid)) + 1].sum(), 1e-6)
    assert (below > 1.6) == (label["shape"][i] == "triangle"), (below, label["shape"][i])


def test_render_shape_geometry():
  covers = {}
  for shape in data.SHAPES:
    for size in data.SIZES:
      image = data.render_shape(shape, "blue", size, "bottom_right", 64)
      assert image.shape == (64, 64, 3) and image.dtype == np.uint8
      assert image[..., :2].max() == 0  # pure blue on black
      cover = image[..., 2] / 255
      assert cover[:32].sum() == 0 and cover[:, :32].sum() == 0  # inside its quadrant
      rows, cols = np.nonzero(cover > 0.5)
      box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
      covers[shape, size] = (cover.sum(), cover.sum() / box)
      np.testing.assert_array_equal(image, data.render_shape(shape, "blue", size,
                                                             "bottom_right", 64))
    assert covers[shape, "large"][0] > 3 * covers[shape, "small"][0]
  # Fill ratio of the bounding box: square 1, circle pi/4, triangle 1/2.
  assert covers["square", "large"][1] > 0.95
  assert 0.7 < covers["circle", "large"][1] < 0.85
  assert 0.4 < covers["triangle", "large"][1] < 0.6
  with pytest.raises(ValueError, match="hexagon"):
    data.render_shape("hexagon", "red", "small", "top_left")


# ====================================================================== resume, epochs, shards


def test_resume_from_any_step_is_exact():
  cfg = _cfg(name="digits", image_size=8, channels=1, attribute="class")
  s = 30  # 1500 // 64 = 23 steps per epoch: step 30 is inside the second epoch
  straight = _take(data.make_stream(cfg, batch_size=64, seed=5), s + 3)[s:]
  resumed = _take(data.make_stream(cfg, batch_size=64, seed=5, start_step=s), 3)
  for x, y in zip(straight, resumed):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  other = next(data.make_stream(cfg, batch_size=64, seed=6, start_step=s))
  assert not np.array_equal(other["image"], resumed[0]["image"])
  assert not np.array_equal(straight[0]["image"], straight[1]["image"])


def test_epochs_and_process_shards():
  cfg = _cfg(name="digits", image_size=8, channels=1)
  everything = set(_keys(data.load_arrays(cfg, 10_000)["image"]))
  assert len(everything) == 1500  # digits are distinct, so images identify examples
  b, steps = 50, 1500 // 100  # two processes, a global batch of 100: 15 steps per epoch
  streams = [_take(data.make_stream(cfg, batch_size=b, seed=0, process_index=p,
                                    process_count=2), 2 * steps) for p in range(2)]
  single = _take(data.make_stream(cfg, batch_size=2 * b, seed=0), 2 * steps)
  for s in range(2 * steps):  # the global batch does not depend on the number of processes
    np.testing.assert_array_equal(
        np.concatenate([streams[0][s]["image"], streams[1][s]["image"]]), single[s]["image"])
    np.testing.assert_array_equal(
        np.concatenate([streams[0][s]["label"], streams[1][s]["label"]]), single[s]["label"])
  epochs = []
  for e in range(2):
    keys = [[k for batch in streams[p][e * steps:(e + 1) * steps] for k in _keys(batch["image"])]
            for p in range(2)]
    assert all(len(set(k)) == len(k) == 750 for k in keys)  # each example once per epoch
    assert not set(keys[0]) & set(keys[1])  # the processes' parts are disjoint
    assert set(keys[0]) | set(keys[1]) == everything  # and cover the split
    epochs.append(keys[0] + keys[1])
  assert epochs[0] != epochs[1]  # a new order each epoch
  counts = [data.get_info(cfg, process_index=p, process_count=7).num_examples for p in range(7)]
  assert sum(counts) == 1500 and max(counts) - min(counts) <= 1


def test_load_arrays_matches_first_batch():
  cfg = _cfg(name="shapes", attribute="size")
  arrays = data.load_arrays(cfg, 16, seed=2)
  first = next(data.make_stream(cfg, batch_size=16, seed=2))
  np.testing.assert_array_equal(arrays["image"], first["image"])
  np.testing.assert_array_equal(arrays["label"], first["label"])
  test = data.load_arrays(cfg, 5000, split="test")
  assert test["image"].shape == (2000, 32, 32, 3)  # at most the split


# ====================================================================== toy2d


def test_toy2d_samples():
  cfg = _cfg(name="toy2d", toy_density="8gaussians")
  info = data.get_info(cfg)
  assert (info.shape, info.levels, info.num_examples, info.num_classes) == ((2,), 0, -1, 0)
  batch = next(data.make_stream(cfg, batch_size=4000, seed=0))
  x = batch["image"]
  assert x.shape == (4000, 2) and x.dtype == np.float32 and batch["label"].shape == (4000, 0)
  radius = np.linalg.norm(x, axis=1)
  assert abs(radius.mean() - 2.0) < 0.01
  sector = np.round(np.arctan2(x[:, 1], x[:, 0]) / (np.pi / 4)) % 8
  assert np.all(np.bincount(sector.astype(int), minlength=8) > 400)  # all 8 modes, ~500 each
  # The sampler and the density agree: mean log p(x) of samples = -entropy.
  entropy = np.log(8) + 1 + np.log(2 * np.pi * 0.1 ** 2)
  assert abs(data.toy2d_log_density("8gaussians", x).mean() + entropy) < 0.05

  checker = next(data.make_stream(_cfg(name="toy2d", toy_density="checkerboard"),
                                  batch_size=4000, seed=0))["image"]
  np.testing.assert_array_equal(data.toy2d_log_density("checkerboard", checker), -np.log(8))
  cells = np.floor(checker + 2).astype(int)
  assert np.all((cells.sum(1) % 2) == 0)  # black squares only
  per_cell = np.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16).reshape(4, 4)
  black = (np.arange(4)[:, None] + np.arange(4)) % 2 == 0
  assert np.all(np.abs(per_cell[black] / 4000 - 1 / 8) < 0.025)  # all 8 squares, equally

  rings = next(data.make_stream(_cfg(name="toy2d", toy_density="rings"), batch_size=4000,
                                seed=0))["image"]
  r = np.linalg.norm(rings, axis=1)
  nearest = np.abs(r[:, None] - np.array([0.5, 1.0, 1.5, 2.0])).argmin(1)
  share = np.bincount(nearest, minlength=4) / 4000
  np.testing.assert_allclose(share, np.array([1, 2, 3, 4]) / 10, atol=0.03)

  moons = next(data.make_stream(_cfg(name="toy2d", toy_density="two_moons"), batch_size=100,
                                seed=0))["image"]
  assert moons.shape == (100, 2) and np.all(np.abs(moons) < 3)


def test_two_moons_density_by_quadrature_is_normalised_and_matches_the_sampler():
  # ∫ p = 1 on a 256 × 256 midpoint grid of [−4, 4]² (where all the mass lies)
  h = 8 / 256
  c = -4 + h * (np.arange(256) + 0.5)
  grid = np.stack(np.meshgrid(c, c, indexing="ij"), -1)
  log_p = data.toy2d_log_density("two_moons", grid)
  assert abs(np.exp(log_p).sum() * h * h - 1) < 1e-4
  # the draws' histogram against the density's mass per cell (24 × 24 cells of [−3, 3]²)
  x = data.sample_toy2d("two_moons", 400_000, np.random.default_rng(0))
  edges = np.linspace(-3, 3, 25)
  counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=[edges, edges])
  fine = 4  # each cell's mass by a 4 × 4 midpoint rule
  w = 6 / 24 / fine
  f = -3 + w * (np.arange(24 * fine) + 0.5)
  mass = np.exp(data.toy2d_log_density(
      "two_moons", np.stack(np.meshgrid(f, f, indexing="ij"), -1))) * w * w
  mass = mass.reshape(24, fine, 24, fine).sum((1, 3))
  expected = mass * len(x)
  busy = expected > 500
  assert busy.sum() > 50
  z = (counts[busy] - expected[busy]) / np.sqrt(expected[busy])
  assert np.abs(z).max() < 5 and abs(np.mean(z ** 2) - 1) < 0.5, (np.abs(z).max(), np.mean(z ** 2))


def test_toy2d_resume_and_seeds():
  cfg = _cfg(name="toy2d", toy_density="rings")
  straight = _take(data.make_stream(cfg, batch_size=8, seed=1), 6)[5]["image"]
  resumed = next(data.make_stream(cfg, batch_size=8, seed=1, start_step=5))["image"]
  np.testing.assert_array_equal(straight, resumed)
  other = next(data.make_stream(cfg, batch_size=8, seed=1, start_step=5, process_index=1,
                                process_count=2))["image"]
  assert not np.array_equal(other, resumed)


@pytest.mark.parametrize("name", ["8gaussians", "checkerboard", "rings"])
def test_toy2d_log_density_is_normalised(name):
  h = 0.01
  grid = np.arange(-3 + h / 2, 3, h)  # cell midpoints; none on a checkerboard edge
  points = np.stack(np.meshgrid(grid, grid), -1)
  total = np.exp(data.toy2d_log_density(name, points)).sum() * h * h
  assert abs(total - 1) < 1e-2, total


# ====================================================================== tfds under mock_data


@pytest.fixture(scope="module")
def tfds():
  return pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize("name, attribute, size, channels, classes", [
    ("cifar10", "class", 32, 3, 10),
    ("mnist", "", 28, 1, 0),
    ("celeba", "Smiling", 64, 3, 2),
    ("lsun_bedroom", "", 32, 3, 0),  # mock images come in random sizes
    ("celeba_hq", "", 64, 3, 0),
])
def test_tfds_streams_under_mock(tfds, name, attribute, size, channels, classes):
  cfg = _cfg(name=name, attribute=attribute, image_size=size, channels=channels,
             shuffle_buffer=8)
  with tfds.testing.mock_data(num_examples=10):
    info = data.get_info(cfg)
    straight = _take(data.make_stream(cfg, batch_size=4, seed=0), 4)
    resumed = next(data.make_stream(cfg, batch_size=4, seed=0, start_step=3))
  assert info.shape == (size, size, channels) and info.num_classes == classes
  for batch in straight:
    assert batch["image"].shape == (4, size, size, channels)
    assert batch["image"].dtype == np.uint8
    assert batch["label"].shape == (4, classes) and batch["label"].dtype == np.float32
    if classes:
      _assert_one_hot(batch["label"], classes)
  np.testing.assert_array_equal(straight[3]["image"], resumed["image"])
  np.testing.assert_array_equal(straight[3]["label"], resumed["label"])
  assert not np.array_equal(straight[0]["image"], straight[1]["image"])


def _raw_mock_examples(tfds, name, n, encoded=False):
  decoders = {"image": tfds.decode.SkipDecoding()} if encoded else None
  ds = tfds.load(name, split="train", download=False, decoders=decoders)
  return list(tfds.as_numpy(ds.take(n)))


def test_tfds_decoding_matches_raw_examples(tfds):
  with tfds.testing.mock_data(num_examples=6):
    raw = _raw_mock_examples(tfds, "cifar10", 4)
    cfg = _cfg(name="cifar10", attribute="class", shuffle_buffer=1)  # 1 = file order
    rgb = next(data.make_stream(cfg, batch_size=4, seed=0))
    grey = next(data.make_stream(_cfg(name="cifar10", channels=1, shuffle_buffer=1),
                                 batch_size=4, seed=0))
    # Mock JPEGs are encoded from noise only when decoding is skipped (lossy), so decode them
    # here the way the pipeline does.
    raw_celeba = _raw_mock_examples(tfds, "celeb_a", 4, encoded=True)
    celeba = next(data.make_stream(
        _cfg(name="celeba", attribute="Smiling", image_size=64, shuffle_buffer=1),
        batch_size=4, seed=0))
    arrays = data.load_arrays(_cfg(name="cifar10"), 5)
  images = np.stack([ex["image"] for ex in raw])
  np.testing.assert_array_equal(rgb["image"], images)
  assert list(rgb["label"].argmax(1)) == [ex["label"] for ex in raw]
  np.testing.assert_array_equal(grey["image"], data.convert_channels(images, 1))
  assert list(celeba["label"].argmax(1)) == [ex["attributes"]["Smiling"] for ex in raw_celeba]
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  decoded = np.stack([tf.io.decode_jpeg(ex["image"]).numpy() for ex in raw_celeba])
  assert decoded.shape[1:] == (218, 178, 3)
  expected = data.resize_images(decoded, 64)  # centre 178 x 178 crop, then resize
  assert np.abs(celeba["image"].astype(int) - expected).max() <= 1
  assert arrays["image"].shape == (5, 32, 32, 3) and arrays["label"].shape == (5, 0)


# ====================================================================== missing data, bad config


def test_fashion_mnist_missing_files(tmp_path):
  cfg = _cfg(name="fashion_mnist", path=str(tmp_path))
  for call in (lambda: data.get_info(cfg), lambda: data.make_stream(cfg, batch_size=4, seed=0)):
    with pytest.raises(data.DataError) as err:
      call()
    message = str(err.value)
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "--config.data.path=" in message and str(tmp_path) in message


def test_tfds_missing_data_names_the_fix(tfds, tmp_path):
  cfg = _cfg(name="cifar10", path=str(tmp_path))
  with pytest.raises(data.DataError) as err:
    data.make_stream(cfg, batch_size=4, seed=0)
  message = str(err.value)
  for part in ("'cifar10'", str(tmp_path), f"tfds build cifar10 --data_dir={tmp_path}",
               "--config.data.download=True", "--config.data.path"):
    assert part in message, part


@pytest.mark.parametrize("download", [False, True])
def test_celeba_hq_missing_gives_manual_instructions(tfds, tmp_path, download):
  cfg = _cfg(name="celeba_hq", path=str(tmp_path))
  cfg.download = download  # True must not try to download: the manual_dir is empty
  with pytest.raises(data.DataError) as err:
    data.get_info(cfg)
  message = str(err.value)
  instructions = tfds.builder("celeb_a_hq/128").MANUAL_DOWNLOAD_INSTRUCTIONS
  for line in instructions.strip().splitlines():
    assert line.strip() in message
  assert os.path.join(str(tmp_path), "downloads", "manual") in message


def test_bad_config_values(tfds, tmp_path):
  with pytest.raises(data.DataError, match="'shape', 'color', 'size', 'position'"):
    data.get_info(_cfg(name="shapes", attribute="texture"))
  with pytest.raises(data.DataError, match="'class'"):
    data.make_stream(_cfg(name="digits", attribute="Young"), batch_size=4, seed=0)
  # The attribute is checked against the builder's features before looking for data.
  with pytest.raises(data.DataError, match="'Smiling'"):
    data.get_info(_cfg(name="celeba", attribute="Smilin", path=str(tmp_path)))
  with pytest.raises(data.DataError, match="data.name"):
    data.get_info(_cfg(name="imagenet"))
  with pytest.raises(data.DataError, match="data.split"):
    data.get_info(_cfg(name="digits", split="validation"))
  with pytest.raises(data.DataError, match="batch_size"):
    data.make_stream(_cfg(name="digits", split="test"), batch_size=1000, seed=0)
