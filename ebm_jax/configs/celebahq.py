"""CelebA-HQ 128x128, unconditional (paper A.2, Fig. 11b). celeb_a_hq is a manual download in
tensorflow-datasets: the first run prints where to put the files."""

from ebm_jax.configs import default


def tiny(c) -> None:
  c.data.image_size = 64  # the smallest size resnet128 takes, to keep CPU tests quick
  c.loss.chunks = 1  # tiny's 8 rows are 1 per device on 8 devices


def get_config(variant: str = ""):
  c = default.get_config()
  c.data.name = "celeba_hq"
  c.data.image_size = 128
  c.model.name = "resnet128"
  c.model.features = 128  # ref §4 / README (CelebAModel F=128)
  c.langevin.num_steps = 40  # paper A.2
  c.langevin.step_size = 1000.0  # paper A.2 (the code's README: 500)
  c.langevin.noise_scale = 0.001  # paper A.2
  c.augment.color_strength = 0.5  # paper A.2
  c.augment.blur_kernel = 11  # paper A.2 (the code: 5)
  c.buffer.capacity = 10_000  # paper §3.1; per device, as the authors' 8 processes each had
  c.buffer.per_device = True  # ref §4 (8 processes, each its own buffer and 100 references)
  c.buffer.noise_restart_prob = 0.05  # paper §3.1
  c.optim.ema_decay = 0.999  # paper §3.1
  # ref §4: 128 per GPU on 8 GPUs, i.e. a global batch of 1024; KL rows n = B (ref §1.4).
  c.train.batch_size = 1024
  # The loss and its gradient in 4 chunks of 32 rows per device: XLA's memory analysis of the
  # 8-device step gives 18.7 GB per device instead of 70.6 GB (the authors' GPUs had 32 GB);
  # the same numbers and FLOPs (benchmarks/README.md, "Memory").
  c.loss.chunks = 4
  c.sample.num_blocks = 20  # ref §5.2 (celeba_gen: 20 x (15 steps + aug), then 120 steps)
  c.sample.block_steps = 15
  c.sample.final_steps = 120
  return default.finish(c, variant, tiny=tiny)
