"""Finished runs for analysis: load one, and look at its eval set example
by example.

The trainer reports means; the experiment scripts ask per-example
questions (does the tape length track difficulty, which hop counts does a
method get right, how deep does each token go). They all start the same
way, from a workdir: its config, its model and data source built exactly as
the trainer built them, and the parameters of one checkpoint.
"""

import json
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adatape import checkpointing
from adatape import elastic
from adatape import run_config
from adatape import storage
from adatape import assemble
from adatape import workdir as workdir_lib
from adatape.models import outputs


class Loaded(NamedTuple):
  config: ml_collections.ConfigDict
  run: assemble.Run
  params: Any
  step: int


def read_run(
    workdir: str, step: int | None = None
) -> tuple[ml_collections.ConfigDict, int, Any]:
  """A run's config, and the step and parameters of one checkpoint
  (default: latest), without building its data source (which may need
  data this host does not have)."""
  path = storage.join(workdir, workdir_lib.CONFIG)
  run_config.check(
      storage.exists(path),
      f"--workdir={workdir} holds no run (no config.json)",
  )
  config = ml_collections.ConfigDict(
      workdir_lib.upgrade(json.loads(storage.read_text(path)))
  )
  step, params = checkpointing.restore_params(workdir, step)
  return config, step, params


def load(workdir: str, step: int | None = None) -> Loaded:
  """A run's config, model, data source and parameters (default: latest)."""
  config, step, params = read_run(workdir, step)
  return Loaded(config, assemble.prepare(config), params, step)


def per_example(
    loaded: Loaded,
    fn: Callable[[outputs.ModelOutput], dict[str, jax.Array]],
    batch_size: int = 1024,
) -> dict[str, np.ndarray]:
  """`fn(model output)` for every eval example, concatenated, plus the eval
  set's own fields (labels, and e.g. `hops` or `values`).

  The model runs in eval mode with the same fixed `halting` key as the
  trainer's eval step, so sampled halting matches the logged eval.
  """
  model, params = loaded.run.model, loaded.params

  @jax.jit
  def apply(x):
    return fn(
        model.apply(
            {"params": params},
            x,
            train=False,
            rngs={"halting": jax.random.key(0)},
        )
    )

  # Batch by batch, keeping the real rows: a streamed eval split
  # (ImageNet-sized) is never held in memory.
  parts = []
  for batch in loaded.run.source.eval_batches(batch_size):
    valid = batch["mask"] > 0
    part = jax.device_get(apply(batch["inputs"]))
    parts.append(
        {
            **{k: v[valid] for k, v in part.items()},
            **{
                k: v[valid]
                for k, v in batch.items()
                if k not in ("inputs", "mask")
            },
        }
    )
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def eval_inputs(run: assemble.Run, examples: int = 0) -> np.ndarray:
  """The eval set's inputs (real rows only), the first `examples` of them
  (0: all), for timing inference on real data."""
  parts, count = [], 0
  for batch in run.source.eval_batches(1024):
    rows = batch["inputs"][batch["mask"] > 0]
    parts.append(rows)
    count += len(rows)
    if examples and count >= examples:
      break
  inputs = np.concatenate(parts)
  return inputs[:examples] if examples else inputs


def whole_batches(inputs: np.ndarray, batch: int) -> list[np.ndarray]:
  """Whole batches of `batch` examples (or the one short batch there is),
  so that every timed call runs the same shape."""
  batches = [inputs[i : i + batch] for i in range(0, len(inputs), batch)]
  return [b for b in batches if len(b) == batch] or batches[:1]


def inference_runners(
    run: assemble.Run,
    params: Any,
    inputs: np.ndarray,
    batch: int = 1024,
    chunk: int = 128,
) -> tuple[dict[str, Callable[[], Any]], int]:
  """Zero-argument calls that run inference over `inputs` in batches, to
  time (`elastic.median_times`), and the number of examples each call runs.

  "padded": the model's jitted forward (for AdaTape every tape slot), on
  each batch, in chunks of `chunk` for an AdaTape model with one tape and
  whole otherwise; for that AdaTape model also "elastic"
  (`elastic.Predictor` on each batch, default buckets, the same chunks,
  the same device),
  so that the two differ only in what the tape allows. Only whole chunks
  are run (the examples cut down to whole batches of whole chunks, both
  shrunk to fit fewer examples), since rows filled up to a chunk would be
  work neither execution needs.
  """
  batch = min(batch, len(inputs))
  chunk = min(chunk, batch)
  batches = [
      jnp.asarray(b) for b in whole_batches(inputs, batch // chunk * chunk)
  ]
  cfg = run.model.config
  elastic_runs = (
      getattr(cfg, "tape", None) is not None and len(cfg.tape.layers) == 1
  )
  padded = elastic.forward_in_chunks(
      run.model, chunk if elastic_runs else len(batches[0])
  )
  runners = {"padded": lambda: [padded(params, b) for b in batches]}
  if elastic_runs:
    # On the one device the padded forward runs on.
    predict = elastic.Predictor(run.model, params, chunk=chunk, devices=1)
    runners["elastic"] = lambda: [predict(b).logits for b in batches]
  return runners, sum(len(b) for b in batches)


def output_per_example(
    workdir: str, field: str, needs: str
) -> tuple[np.ndarray, ml_collections.ConfigDict]:
  """One ModelOutput field over a run's eval set, and the run's config.

  A model whose output lacks the field (None) is a ConfigError saying
  `needs`, e.g. "depth maps need a token-adaptive model".
  """
  loaded = load(workdir)
  name = loaded.config.model.name

  def fn(out):
    value = getattr(out, field)
    run_config.check(
        value is not None, f"model {name!r} returns no {field}; {needs}"
    )
    return {field: value}

  return per_example(loaded, fn)[field], loaded.config
