"""Starting a run from another run's parameters (`init_from=WORKDIR`).

Fine-tuning (JFT pre-training, then ImageNet at 384 px) and the stages of
the ACM conversion start from a finished run: every parameter with the
same path and shape is copied, the others keep their fresh
initialisation. An image model's position embeddings are resampled to its
patch grid when the resolution changed, as the ViT paper fine-tunes.
"""

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from adatape import checkpointing
from adatape import run_config
from adatape import storage


def resample_grid(posemb_1xNxD: np.ndarray, tokens: int) -> np.ndarray:
  """A square grid of position embeddings resized (bilinear) to `tokens`.

  How a ViT fine-tunes at another resolution: the patch grid changes size,
  and the learned embedding is resampled over it (Dosovitskiy et al. 2021,
  section 3.2).
  """
  _, n, width = posemb_1xNxD.shape
  old, new = math.isqrt(n), math.isqrt(tokens)
  grid = posemb_1xNxD.reshape(old, old, width)
  resized = jax.image.resize(
      jnp.asarray(grid, jnp.float32), (new, new, width), method="bilinear"
  )
  return np.asarray(resized, posemb_1xNxD.dtype).reshape(1, tokens, width)


def _is_square_grid(shape: tuple[int, ...]) -> bool:
  return len(shape) == 3 and math.isqrt(shape[1]) ** 2 == shape[1]


def load(
    workdir: str, abstract_params: Any, model_config: Any
) -> dict[str, np.ndarray]:
  """The leaves of `workdir`'s latest parameters that this model has too
  (same path and shape), by path; refuses a run that shares none.

  For a model on a patch grid (`model_config.image_grid`), position
  embeddings of another grid size are resampled to this model's.
  """
  run_config.check(
      storage.exists(storage.join(workdir, "checkpoints")),
      f"init_from={workdir} holds no checkpoints/ (train that run first)",
  )
  image_grid = getattr(model_config, "image_grid", False)
  step, loaded = checkpointing.restore_params(workdir)
  loaded = flax.traverse_util.flatten_dict(loaded, sep="/")
  flat = flax.traverse_util.flatten_dict(abstract_params, sep="/")
  found, resampled = {}, []
  for path, leaf in flat.items():
    if path not in loaded:
      continue
    value = np.asarray(loaded[path], leaf.dtype)
    if value.shape == leaf.shape:
      found[path] = value
    elif (
        image_grid
        and path.rsplit("/", 1)[-1].startswith("posembed")
        and _is_square_grid(value.shape)
        and _is_square_grid(leaf.shape)
        and value.shape[2] == leaf.shape[2]
    ):
      found[path] = resample_grid(value, leaf.shape[1])
      resampled.append(path)
  run_config.check(
      bool(found),
      f"init_from={workdir} shares no parameter "
      "(same path and shape) with this model",
  )
  fresh = [path for path in flat if path not in found]
  print(
      f"initialising {len(found)} of {len(flat)} parameter arrays from "
      f"{workdir} (step {step}); resampled to this image size: "
      f"{', '.join(resampled) or 'none'}; fresh: "
      f"{', '.join(fresh[:6]) or 'none'}"
      f"{' ...' if len(fresh) > 6 else ''}",
      flush=True,
  )
  return found


def with_leaves(params: Any, leaves: dict[str, np.ndarray]) -> Any:
  """`params` with the given leaves replaced, keeping their shardings."""
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  for path, value in leaves.items():
    flat[path] = jax.device_put(value, flat[path].sharding)
  return flax.traverse_util.unflatten_dict(flat, sep="/")
