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

import functools
import json
import math
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from adatape import assemble
from adatape import checkpointing
from adatape import data as data_lib
from adatape import init_from
from adatape import losses
from adatape import optim
from adatape import parallel
from adatape import preemption as preemption_lib
from adatape import profiling
from adatape import reporting
from adatape import storage
from adatape import run_config
from adatape import workdir as workdir_lib
from adatape.models import outputs


class NonFiniteError(RuntimeError):
  """The loss or gradient norm became NaN or infinite."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # Raw key data; per-step keys are fold_in(rng, step).


def init_state(
    seed_key: jax.Array,
    *,
    model: Any,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, ...],
) -> TrainState:
  """A fresh train state: parameters from `seed_key`, step 0.

  Jitted here, so that every caller compiles the init as one program: run
  eagerly, each op of `model.init` compiles on its own (291 compiles, 21.9
  s of a 54.2 s script building two tiny benchmark models on a 2-core CPU;
  experiments/results/jit_init_cpu.txt). Under a caller's own `jit` or
  `eval_shape` (the trainer's) it is traced inline as before.
  """

  def init(seed_key):
    params_key, dropout_key = jax.random.split(seed_key)
    dummy = jnp.zeros((1,) + input_shape, jnp.float32)
    params = model.init(
        {"params": params_key, "dropout": dropout_key, "halting": dropout_key},
        dummy,
        train=False,
    )["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.fold_in(seed_key, 1)),
    )

  return jax.jit(init)(seed_key)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: Any,
    tx: optax.GradientTransformation,
    lr_fn: optax.Schedule,
    loss: str,
    spread: tuple[str, ...] = (),
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch; returns metrics (batch means,
  and the variance over the batch of the model metrics named in
  `spread`)."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_fn(params):
    out = model.apply(
        {"params": params},
        batch["inputs"],
        train=True,
        rngs={"dropout": key, "halting": jax.random.fold_in(key, 1)},
    )
    task_B = losses.example_loss(out, batch["label"], loss)
    total = task_B.mean() + out.aux_loss_B.mean()
    return total, (out, task_B)

  (total, (out, task_B)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params
  )
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  correct = losses.top1_correct(out.logits, batch["label"])
  metrics = {
      "train/loss": total,
      "train/task_loss": task_B.mean(),
      "train/aux_loss": out.aux_loss_B.mean(),
      "train/accuracy": correct.mean(),
      "train/grad_norm": optim.global_norm(grads),
      "train/learning_rate": lr_fn(state.step),
  }
  for name, value in outputs.per_example_metrics(out).items():
    metrics[f"train/{name}"] = value.mean()
    if name in spread:
      metrics[f"train/{name}_var"] = value.var()
  new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state
  )
  return new_state, metrics


def eval_step(
    params: Any,
    batch: dict[str, jax.Array],
    *,
    model: Any,
    loss: str,
    spread: tuple[str, ...] = (),
) -> dict[str, jax.Array]:
  """Masked sums over a padded eval batch (exact when summed over batches);
  sums of squares too for the model metrics named in `spread`.

  Models that sample at evaluation (PonderNet's sampled halting) draw from
  a fixed `halting` key, so an eval is reproducible.
  """
  out = model.apply(
      {"params": params},
      batch["inputs"],
      train=False,
      rngs={"halting": jax.random.key(0)},
  )
  mask = batch["mask"]
  sums = {
      "count": mask.sum(),
      "correct": (losses.top1_correct(out.logits, batch["label"]) * mask).sum(),
      "loss": (losses.task_loss(out.logits, batch["label"], loss) * mask).sum(),
  }
  for name, value in outputs.per_example_metrics(out).items():
    sums[name] = (value * mask).sum()
    if name in spread:
      sums[f"{name}_sq"] = (value**2 * mask).sum()
  return sums


def evaluate(
    jitted_eval, params, source, mesh, local_batch: int
) -> dict[str, float]:
  """Runs the whole eval set; returns `eval/*` means over real examples
  (and `eval/NAME_var` where the eval step summed squares)."""
  totals: dict[str, float] = {}
  for local in source.eval_batches(local_batch):
    sums = jax.device_get(
        jitted_eval(
            params,
            parallel.global_batch(
                {k: local[k] for k in ("inputs", "label", "mask")}, mesh
            ),
        )
    )
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  count = totals.pop("count")
  result = {
      "eval/accuracy": totals.pop("correct") / count,
      "eval/loss": totals.pop("loss") / count,
      "eval/examples": count,
  }
  for name in [k for k in totals if not k.endswith("_sq")]:
    mean = totals[name] / count
    result[f"eval/{name}"] = mean
    if f"{name}_sq" in totals:
      result[f"eval/{name}_var"] = max(
          totals[f"{name}_sq"] / count - mean**2, 0.0
      )
  return result


def _all_finite(metrics: dict[str, Any]) -> bool:
  return all(
      math.isfinite(float(metrics[k]))
      for k in ("train/loss", "train/grad_norm")
  )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if possible); returns results."""
  run = assemble.prepare(config)
  sched = run.schedule
  mesh = parallel.make_mesh(run.mesh)
  num_devices = mesh.devices.size
  for key, value in (
      ("batch_size", sched.batch_size),
      ("eval_batch_size", sched.eval_batch_size),
  ):
    run_config.check(
        value % mesh.shape["data"] == 0,
        f"{key}={value} must be divisible by the data axis of the mesh "
        f"({mesh.shape['data']})",
    )
  workdir_lib.check(config, workdir, assemble.typed_defaults(config))
  is_main = jax.process_index() == 0
  results_path = storage.join(workdir, workdir_lib.RESULTS)

  tx = optim.create(run.optim, sched.total_steps)
  lr_fn = optim.schedule(run.optim, sched.total_steps)
  init = functools.partial(
      init_state,
      model=run.model,
      tx=tx,
      input_shape=tuple(run.source.input_shape),
  )
  seed_key = jax.random.key(sched.seed)
  abstract = jax.eval_shape(init, seed_key)
  state_sharding = parallel.state_shardings(abstract, mesh, run.mesh)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract,
      state_sharding,
  )
  num_params = sum(
      int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params)
  )
  # `init_from` is read (and validated) before the workdir is touched, but
  # only for a new run: a workdir with config.json was validated when it
  # started and resumes from its own checkpoints.
  load_init = functools.partial(
      init_from.load, sched.init_from, abstract.params, run.model.config
  )
  starting = not workdir_lib.holds_run(workdir)
  init_leaves = load_init() if sched.init_from and starting else {}

  storage.makedirs(workdir)
  ckpt = checkpointing.Checkpointer(
      os.path.join(workdir, workdir_lib.CHECKPOINTS),
      every_steps=sched.checkpoint_every_steps,
      max_to_keep=sched.max_checkpoints,
  )
  if ckpt.latest_step() == sched.total_steps and storage.exists(results_path):
    ckpt.close()
    results = reporting.read_json(results_path)
    print(
        f"run already finished ({sched.total_steps} steps); results in "
        f"{results_path}",
        flush=True,
    )
    return results
  if is_main:
    reporting.atomic_write_json(
        storage.join(workdir, workdir_lib.CONFIG), json.loads(config.to_json())
    )

  restored = ckpt.restore_latest(abstract)
  if restored is not None:
    latest, state, saved = restored
    train_time = float(saved["train_time_s"])
    print(f"resumed from step {latest} in {workdir}/checkpoints", flush=True)
  else:
    state = jax.jit(init, out_shardings=state_sharding)(seed_key)
    if sched.init_from:
      # A run stopped before its first checkpoint starts over from here.
      init_leaves = init_leaves or load_init()
      state = state.replace(
          params=init_from.with_leaves(state.params, init_leaves)
      )
      state = state.replace(
          opt_state=jax.jit(tx.init, out_shardings=state_sharding.opt_state)(
              state.params
          )
      )
    train_time = 0.0
    print(
        f"training {config.model.name} ({num_params:,} parameters) for "
        f"{sched.total_steps} steps on {num_devices} device(s)",
        flush=True,
    )
  start_step = int(jax.device_get(state.step))

  batch_sharding = parallel.batch_sharding(mesh)
  replicated = parallel.replicated(mesh)
  spread = tuple(m.name for m in run.metrics if m.spread)
  jit_train = jax.jit(
      functools.partial(
          train_step,
          model=run.model,
          tx=tx,
          lr_fn=lr_fn,
          loss=sched.loss,
          spread=spread,
      ),
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, replicated),
      donate_argnums=0,
  )
  jit_eval = jax.jit(
      functools.partial(
          eval_step, model=run.model, loss=sched.loss, spread=spread
      ),
      in_shardings=(state_sharding.params, batch_sharding),
      out_shardings=replicated,
  )
  local_batch = sched.batch_size // jax.process_count()
  local_eval_batch = sched.eval_batch_size // jax.process_count()

  reporter = reporting.Reporter(
      workdir,
      total_steps=sched.total_steps,
      start_step=start_step,
      is_main=is_main,
      metrics=run.metrics,
  )
  eval_metrics: dict[str, float] = {}
  eval_time = 0.0
  segment_start = time.monotonic()
  step = start_step
  preemption = preemption_lib.Flag()

  def elapsed() -> float:
    """Wall time of the run so far, over all its segments."""
    return train_time + time.monotonic() - segment_start

  def meta(step: int) -> dict[str, Any]:
    """Host-side position saved with the state (batches are f(step))."""
    return {"step": step, "data_position": step, "train_time_s": elapsed()}

  batches = data_lib.prefetch(
      lambda s: parallel.global_batch(
          run.source.train_batch(s, local_batch), mesh
      ),
      start_step,
      sched.total_steps,
  )
  trace = profiling.StepTrace(workdir, sched.profile_steps, is_main)
  try:
    while step < sched.total_steps:
      if preemption.requested(ckpt, step):
        ckpt.wait()
        if ckpt.latest_step() != step:
          ckpt.save(step, state, meta(step), force=True)
          ckpt.wait()
        raise preemption_lib.Preempted(
            f"preempted at step {step}; checkpoint saved in {workdir}/"
            "checkpoints; run the same command again to resume"
        )
      trace.before(step)
      state, metrics = jit_train(state, next(batches))
      trace.after(step, state)
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
              "the data"
          )
        if do_log:
          reporter.write(
              step,
              {
                  **{k: float(v) for k, v in metrics.items()},
                  "perf/train_time_s": elapsed(),
              },
          )
      if do_eval:
        eval_start = time.monotonic()
        eval_metrics = evaluate(
            jit_eval, state.params, run.source, mesh, local_eval_batch
        )
        eval_time += time.monotonic() - eval_start
        reporter.write(step, {**eval_metrics, "perf/train_time_s": elapsed()})
        reporter.restart_clock(step)
      if do_save:
        ckpt.save(step, state, meta(step), force=last)
      if do_eval or do_save:
        reporter.flush()
    if not eval_metrics:
      # Resumed from the final checkpoint of a run stopped before its
      # results were written: only the final eval is missing.
      eval_metrics = evaluate(
          jit_eval, state.params, run.source, mesh, local_eval_batch
      )
  finally:
    trace.stop()
    batches.close()
    preemption.restore()
    ckpt.close()
    reporter.close()

  wall = elapsed()
  segment_steps = sched.total_steps - start_step
  segment_time = time.monotonic() - segment_start - eval_time
  results = dict(eval_metrics)
  results.update(
      {
          "model": config.model.name,
          "steps": sched.total_steps,
          "wall_time_s": wall,
          "steps_per_sec": segment_steps / max(segment_time, 1e-9),
          "num_params": num_params,
          "num_devices": num_devices,
          "device_kind": jax.devices()[0].device_kind,
      }
  )
  if is_main:
    reporting.atomic_write_json(results_path, results)
  return results
