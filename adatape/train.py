"""The one trainer: `train_and_evaluate(config, workdir)` for every model.

`train_step` and `eval_step` are pure module-level functions; the trainer
binds the model and optimizer with `functools.partial` and compiles them
with `jax.jit` and explicit `NamedSharding`s on a device mesh (see
`parallel.py`). Everything a resumed run needs is in the checkpoint: the
train state (parameters, optimizer state, step, RNG key) and the data
position (= the step, since batches are a pure function of it). Per-step
randomness is `fold_in(key, step)`, so a resumed run draws the same numbers.

Order of business in `train_and_evaluate`: validate everything (config,
data, model, mesh) before touching the workdir; refuse a workdir that holds
a different run; resume from its latest checkpoint if any; train, logging
and evaluating periodically; stop with the last good checkpoint intact if
the loss or gradient stops being finite; on SIGTERM, save and stop
cleanly; write results.json at the end.
"""

import dataclasses
import functools
import json
import math
import os
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tensorflow.io import gfile

from adatape import checkpointing
from adatape import data as data_lib
from adatape import models
from adatape import optim
from adatape import parallel
from adatape import reporting
from adatape import run_config
from adatape.models import outputs

LOSSES = ("softmax_xent", "sigmoid_xent")


class NonFiniteError(RuntimeError):
  """The loss or gradient norm became NaN or infinite."""


class Preempted(Exception):
  """SIGTERM (or a multi-host preemption notice) arrived; state was saved."""


class _PreemptionFlag:
  """Turns SIGTERM into a flag the training loop checks between steps.

  On one process the signal handler decides. With several processes every
  host must stop at the same step, so JAX's preemption sync point (through
  Orbax) decides instead; it is fed by the coordination service, which
  hears the same preemption notice on every host.
  """

  def __init__(self):
    self._signalled = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._signalled = True

  def requested(self, ckpt: checkpointing.Checkpointer, step: int) -> bool:
    if jax.process_count() > 1:
      return ckpt.reached_preemption(step)
    return self._signalled

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Top-level run keys: how long, how big, how often.

  Attributes:
    seed: seeds parameters, dropout and data.
    total_steps: training steps.
    batch_size: global training batch.
    eval_batch_size: global eval batch.
    loss: "softmax_xent" or "sigmoid_xent" (sum over classes, the official
      multi-label loss).
    log_every_steps: train metrics and progress line interval.
    eval_every_steps: eval interval (and always at the end).
    checkpoint_every_steps: checkpoint interval (and always at the end).
    max_checkpoints: checkpoints kept.
    init_from: a workdir whose latest checkpoint initialises every
      parameter with the same path and shape (fine-tuning; the stages of
      the ACM conversion); the others keep their fresh initialisation,
      except that an image model's position embeddings are resampled to
      its patch grid.
  """

  seed: int = 0
  total_steps: int = 1000
  batch_size: int = 128
  eval_batch_size: int = 1024
  loss: str = "softmax_xent"
  log_every_steps: int = 100
  eval_every_steps: int = 1000
  checkpoint_every_steps: int = 1000
  max_checkpoints: int = 3
  init_from: str = ""

  def __post_init__(self):
    for name in ("total_steps", "batch_size", "eval_batch_size",
                 "log_every_steps", "eval_every_steps",
                 "checkpoint_every_steps", "max_checkpoints"):
      value = getattr(self, name)
      run_config.check(value >= 1, f"{name}={value} must be >= 1")
    run_config.check(self.seed >= 0, f"seed={self.seed} must be >= 0")
    run_config.check_choice("loss", self.loss, LOSSES)


_SECTIONS = ("model", "tape", "data", "optim", "mesh")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # Raw key data; per-step keys are fold_in(rng, step).


def init_state(seed_key: jax.Array, *, model: Any,
               tx: optax.GradientTransformation,
               input_shape: tuple[int, ...]) -> TrainState:
  """A fresh train state: parameters from `seed_key`, step 0."""
  params_key, dropout_key = jax.random.split(seed_key)
  dummy = jnp.zeros((1,) + input_shape, jnp.float32)
  params = model.init({"params": params_key, "dropout": dropout_key,
                       "halting": dropout_key}, dummy, train=False)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.fold_in(seed_key, 1)))


def task_loss(logits: jax.Array, labels: jax.Array, loss: str) -> jax.Array:
  """Per-example classification loss `[B]` in float32.

  `labels` are class indices `[B]`, or targets `[B, C]`: multi-hot
  (multi-label data, with sigmoid_xent) or soft (mixup). Soft targets with
  softmax_xent are normalised to sum to one.
  """
  logits = logits.astype(jnp.float32)
  if labels.ndim == 1:
    if loss == "softmax_xent":
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    labels = jax.nn.one_hot(labels, logits.shape[-1])
  targets = labels.astype(jnp.float32)
  if loss == "sigmoid_xent":
    return optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1)
  targets = targets / jnp.maximum(targets.sum(-1, keepdims=True), 1e-9)
  return optax.softmax_cross_entropy(logits, targets)


def top1_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Whether the top class is right, `[B]`; for `[B, C]` targets, whether
  it is one of the example's positive classes (precision@1)."""
  top = logits.argmax(-1)
  if labels.ndim == 1:
    return top == labels
  return jnp.take_along_axis(labels, top[:, None], axis=-1)[:, 0] > 0


def example_loss(out: outputs.ModelOutput, labels: jax.Array, loss: str
                 ) -> jax.Array:
  """The training task loss per example `[B]`.

  For a model with a halting distribution over steps (PonderNet) it is the
  expected loss, sum_n p_n * loss(step n's logits); otherwise the loss of
  `out.logits`.
  """
  if out.step_logits_SxBxC is None:
    return task_loss(out.logits, labels, loss)
  per_step_SxB = jax.vmap(lambda l: task_loss(l, labels, loss))(
      out.step_logits_SxBxC)
  return jnp.sum(jnp.exp(out.step_log_probs_BxS) * per_step_SxB.T, axis=-1)


def _aux_values(out: outputs.ModelOutput) -> dict[str, jax.Array]:
  """Per-example auxiliaries present in this model's output."""
  values = {}
  if out.tape_length_B is not None:
    values["tape_length"] = out.tape_length_B.astype(jnp.float32)
    values["atr_loss"] = out.atr_loss_B
  if out.ponder_cost_B is not None:
    values["ponder_cost"] = out.ponder_cost_B
  if out.ponder_steps_B is not None:
    values["ponder_steps"] = out.ponder_steps_B
  if out.flops_B is not None:
    values["gflops"] = out.flops_B / 1e9
  return values


def train_step(state: TrainState, batch: dict[str, jax.Array], *,
               model: Any, tx: optax.GradientTransformation,
               lr_fn: optax.Schedule, loss: str
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch; returns metrics (batch means)."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_fn(params):
    out = model.apply({"params": params}, batch["inputs"], train=True,
                      rngs={"dropout": key,
                            "halting": jax.random.fold_in(key, 1)})
    task_B = example_loss(out, batch["label"], loss)
    total = task_B.mean() + out.aux_loss_B.mean()
    return total, (out, task_B)

  (total, (out, task_B)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  correct = top1_correct(out.logits, batch["label"])
  metrics = {
      "train/loss": total,
      "train/task_loss": task_B.mean(),
      "train/aux_loss": out.aux_loss_B.mean(),
      "train/accuracy": correct.mean(),
      "train/grad_norm": optax.tree.norm(grads),
      "train/learning_rate": lr_fn(state.step),
  }
  for name, value in _aux_values(out).items():
    metrics[f"train/{name}"] = value.mean()
    if name == "tape_length":
      metrics["train/tape_length_var"] = value.var()
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state)
  return new_state, metrics


def eval_step(params: Any, batch: dict[str, jax.Array], *, model: Any,
              loss: str) -> dict[str, jax.Array]:
  """Masked sums over a padded eval batch (exact when summed over batches).

  Models that sample at evaluation (PonderNet's sampled halting) draw from
  a fixed `halting` key, so an eval is reproducible.
  """
  out = model.apply({"params": params}, batch["inputs"], train=False,
                    rngs={"halting": jax.random.key(0)})
  mask = batch["mask"]
  sums = {
      "count": mask.sum(),
      "correct": (top1_correct(out.logits, batch["label"]) * mask).sum(),
      "loss": (task_loss(out.logits, batch["label"], loss) * mask).sum(),
  }
  for name, value in _aux_values(out).items():
    sums[name] = (value * mask).sum()
    sums[f"{name}_sq"] = (value**2 * mask).sum()
  return sums


def evaluate(jitted_eval, params, source, mesh, local_batch: int
             ) -> dict[str, float]:
  """Runs the whole eval set; returns `eval/*` means over real examples."""
  totals: dict[str, float] = {}
  for local in source.eval_batches(local_batch):
    sums = jax.device_get(jitted_eval(params, parallel.global_batch(
        {k: local[k] for k in ("inputs", "label", "mask")}, mesh)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  count = totals.pop("count")
  result = {"eval/accuracy": totals.pop("correct") / count,
            "eval/loss": totals.pop("loss") / count,
            "eval/examples": count}
  for name in [k for k in totals if not k.endswith("_sq")]:
    mean = totals[name] / count
    result[f"eval/{name}"] = mean
    if name == "tape_length":
      result["eval/tape_length_var"] = max(
          totals[f"{name}_sq"] / count - mean**2, 0.0)
  return result


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything validated from a config, before anything is written."""

  schedule: Schedule
  optim: optim.Config
  mesh: parallel.Config
  source: Any
  model: Any


def prepare(config: ml_collections.ConfigDict) -> Run:
  """Validates the whole config; raises ConfigError naming the bad key."""
  for section in _SECTIONS:
    if section == "tape" and section not in config:
      continue
    run_config.check(section in config,
                     f"the config has no `{section}` section")
  top = {k: v for k, v in config.items() if k not in _SECTIONS}
  schedule = run_config.to_dataclass(Schedule, top, "config")
  optim_config = run_config.to_dataclass(optim.Config, config.optim, "optim")
  mesh_config = run_config.to_dataclass(parallel.Config, config.mesh, "mesh")
  source = data_lib.create(config, process_index=jax.process_index(),
                           process_count=jax.process_count())
  model = models.build(config, input_shape=source.input_shape,
                       num_classes=source.num_classes)
  return Run(schedule, optim_config, mesh_config, source, model)


def _check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to continue a workdir that holds a run of another config."""
  path = os.path.join(workdir, "config.json")
  if not gfile.exists(path):
    return
  saved = reporting.read_json(path)
  current = json.loads(config.to_json())
  if saved != current:
    differing = sorted(_flat_diff(saved, current))
    raise run_config.ConfigError(
        f"workdir {workdir} holds a run with a different config "
        f"({', '.join(differing[:5])} differ); use a new --workdir")


def _flat_diff(a: Any, b: Any, prefix: str = "") -> set[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    keys = set(a) | set(b)
    return set().union(*[_flat_diff(a.get(k), b.get(k), f"{prefix}{k}.")
                         for k in keys]) if keys else set()
  return set() if a == b else {prefix.rstrip(".")}


def resample_grid(posemb_1xNxD: np.ndarray, tokens: int) -> np.ndarray:
  """A square grid of position embeddings resized (bilinear) to `tokens`.

  How a ViT fine-tunes at another resolution: the patch grid changes size,
  and the learned embedding is resampled over it (Dosovitskiy et al. 2021,
  section 3.2).
  """
  _, n, width = posemb_1xNxD.shape
  old, new = math.isqrt(n), math.isqrt(tokens)
  grid = posemb_1xNxD.reshape(old, old, width)
  resized = jax.image.resize(jnp.asarray(grid, jnp.float32),
                             (new, new, width), method="bilinear")
  return np.asarray(resized, posemb_1xNxD.dtype).reshape(1, tokens, width)


def _is_square_grid(shape: tuple[int, ...]) -> bool:
  return len(shape) == 3 and math.isqrt(shape[1]) ** 2 == shape[1]


def _load_init(workdir: str, abstract_params: Any, image_grid: bool
               ) -> dict[str, np.ndarray]:
  """The leaves of `workdir`'s latest parameters that this model has too
  (same path and shape), by path; refuses a run that shares none.

  With `image_grid` (a patch stem), position embeddings of another grid
  size are resampled to this model's (a fine-tune at another resolution).
  """
  run_config.check(
      gfile.exists(os.path.join(workdir, "checkpoints")),
      f"init_from={workdir} holds no checkpoints/ (train that run first)")
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
    elif (image_grid and path.rsplit("/", 1)[-1].startswith("posembed")
          and _is_square_grid(value.shape) and _is_square_grid(leaf.shape)
          and value.shape[2] == leaf.shape[2]):
      found[path] = resample_grid(value, leaf.shape[1])
      resampled.append(path)
  run_config.check(bool(found), f"init_from={workdir} shares no parameter "
                   "(same path and shape) with this model")
  fresh = [path for path in flat if path not in found]
  print(f"initialising {len(found)} of {len(flat)} parameter arrays from "
        f"{workdir} (step {step}); resampled to this image size: "
        f"{', '.join(resampled) or 'none'}; fresh: "
        f"{', '.join(fresh[:6]) or 'none'}"
        f"{' ...' if len(fresh) > 6 else ''}", flush=True)
  return found


def _with_leaves(params: Any, leaves: dict[str, np.ndarray]) -> Any:
  """`params` with the given leaves replaced, keeping their shardings."""
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  for path, value in leaves.items():
    flat[path] = jax.device_put(value, flat[path].sharding)
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def _all_finite(metrics: dict[str, Any]) -> bool:
  return all(math.isfinite(float(metrics[k]))
             for k in ("train/loss", "train/grad_norm"))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if possible); returns results."""
  run = prepare(config)
  sched = run.schedule
  mesh = parallel.make_mesh(run.mesh)
  num_devices = mesh.devices.size
  for key, value in (("batch_size", sched.batch_size),
                     ("eval_batch_size", sched.eval_batch_size)):
    run_config.check(
        value % mesh.shape["data"] == 0,
        f"{key}={value} must be divisible by the data axis of the mesh "
        f"({mesh.shape['data']})")
  _check_workdir(config, workdir)
  is_main = jax.process_index() == 0
  results_path = os.path.join(workdir, "results.json")

  tx = optim.create(run.optim, sched.total_steps)
  lr_fn = optim.schedule(run.optim, sched.total_steps)
  init = functools.partial(init_state, model=run.model, tx=tx,
                           input_shape=tuple(run.source.input_shape))
  seed_key = jax.random.key(sched.seed)
  abstract = jax.eval_shape(init, seed_key)
  state_sharding = parallel.state_shardings(abstract, mesh, run.mesh)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, state_sharding)
  num_params = sum(int(np.prod(x.shape))
                   for x in jax.tree.leaves(abstract.params))
  # `init_from` is read (and validated) before the workdir is touched, but
  # only for a new run: a workdir with config.json was validated when it
  # started and resumes from its own checkpoints.
  starting = not gfile.exists(os.path.join(workdir, "config.json"))
  init_leaves = (_load_init(sched.init_from, abstract.params,
                            config.model.get("stem") == "patches")
                 if sched.init_from and starting else {})

  gfile.makedirs(workdir)
  ckpt = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      every_steps=sched.checkpoint_every_steps,
      max_to_keep=sched.max_checkpoints)
  if (ckpt.latest_step() == sched.total_steps
      and gfile.exists(results_path)):
    ckpt.close()
    results = reporting.read_json(results_path)
    print(f"run already finished ({sched.total_steps} steps); results in "
          f"{results_path}", flush=True)
    return results
  if is_main:
    reporting.atomic_write_json(os.path.join(workdir, "config.json"),
                                json.loads(config.to_json()))

  restored = ckpt.restore_latest(abstract)
  if restored is not None:
    latest, state, meta = restored
    train_time = float(meta["train_time_s"])
    print(f"resumed from step {latest} in {workdir}/checkpoints", flush=True)
  else:
    state = jax.jit(init, out_shardings=state_sharding)(seed_key)
    if sched.init_from:
      # A run stopped before its first checkpoint starts over from here.
      init_leaves = init_leaves or _load_init(
          sched.init_from, abstract.params,
          config.model.get("stem") == "patches")
      state = state.replace(params=_with_leaves(state.params, init_leaves))
      state = state.replace(opt_state=jax.jit(
          tx.init, out_shardings=state_sharding.opt_state)(state.params))
    train_time = 0.0
    print(f"training {config.model.name} ({num_params:,} parameters) for "
          f"{sched.total_steps} steps on {num_devices} device(s)",
          flush=True)
  start_step = int(jax.device_get(state.step))

  batch_sharding = parallel.batch_sharding(mesh)
  replicated = parallel.replicated(mesh)
  jit_train = jax.jit(
      functools.partial(train_step, model=run.model, tx=tx, lr_fn=lr_fn,
                        loss=sched.loss),
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, replicated),
      donate_argnums=0)
  jit_eval = jax.jit(
      functools.partial(eval_step, model=run.model, loss=sched.loss),
      in_shardings=(state_sharding.params, batch_sharding),
      out_shardings=replicated)
  local_batch = sched.batch_size // jax.process_count()
  local_eval_batch = sched.eval_batch_size // jax.process_count()

  reporter = reporting.Reporter(workdir, total_steps=sched.total_steps,
                                start_step=start_step, is_main=is_main)
  eval_metrics: dict[str, float] = {}
  eval_time = 0.0
  segment_start = time.monotonic()
  step = start_step
  preemption = _PreemptionFlag()

  def elapsed() -> float:
    """Wall time of the run so far, over all its segments."""
    return train_time + time.monotonic() - segment_start

  def meta(step: int) -> dict[str, Any]:
    """Host-side position saved with the state (batches are f(step))."""
    return {"step": step, "data_position": step, "train_time_s": elapsed()}

  try:
    while step < sched.total_steps:
      if preemption.requested(ckpt, step):
        ckpt.wait()
        if ckpt.latest_step() != step:
          ckpt.save(step, state, meta(step), force=True)
          ckpt.wait()
        raise Preempted(
            f"preempted at step {step}; checkpoint saved in {workdir}/"
            "checkpoints; run the same command again to resume")
      batch = parallel.global_batch(
          run.source.train_batch(step, local_batch), mesh)
      state, metrics = jit_train(state, batch)
      step += 1
      last = step == sched.total_steps
      do_log = step % sched.log_every_steps == 0 or last
      do_eval = step % sched.eval_every_steps == 0 or last
      do_save = step % sched.checkpoint_every_steps == 0 or last
      if do_log or do_save:
        metrics = jax.device_get(metrics)
        if not _all_finite(metrics):
          ckpt.wait()
          raise NonFiniteError(
              f"non-finite loss or gradient by step {step}; the last good "
              f"checkpoint (step {ckpt.latest_step()}) in {workdir}/"
              "checkpoints is intact; lower optim.learning_rate or check "
              "the data")
        if do_log:
          reporter.write(step, {**{k: float(v) for k, v in metrics.items()},
                                "perf/train_time_s": elapsed()})
      if do_eval:
        eval_start = time.monotonic()
        eval_metrics = evaluate(jit_eval, state.params, run.source, mesh,
                                local_eval_batch)
        eval_time += time.monotonic() - eval_start
        reporter.write(step, {**eval_metrics, "perf/train_time_s": elapsed()})
        reporter.restart_clock(step)
      if do_save:
        ckpt.save(step, state, meta(step), force=last)
    if not eval_metrics:
      # Resumed from the final checkpoint of a run stopped before its
      # results were written: only the final eval is missing.
      eval_metrics = evaluate(jit_eval, state.params, run.source, mesh,
                              local_eval_batch)
  finally:
    preemption.restore()
    ckpt.close()
    reporter.close()

  wall = elapsed()
  segment_steps = sched.total_steps - start_step
  segment_time = time.monotonic() - segment_start - eval_time
  results = dict(eval_metrics)
  results.update({
      "model": config.model.name,
      "steps": sched.total_steps,
      "wall_time_s": wall,
      "steps_per_sec": segment_steps / max(segment_time, 1e-9),
      "num_params": num_params,
      "num_devices": num_devices,
      "device_kind": jax.devices()[0].device_kind,
  })
  if is_main:
    reporting.atomic_write_json(results_path, results)
  return results
