r"""What the tape reader's top-k selection costs, per implementation.

The reading loop is small sequential ops, so at the parity model's size it
is a large share of an inference pass although its FLOPs are not
(`experiments/elastic_inference.py`). This script times the choice
`adatape/tape/reader.py` makes, on one device, interleaved rounds, median:
  top-k        a whole read (T / p reading steps, exit at inference) whose
               candidates are picked by rank (`reader.top_k`, M^2
               compares per example, fused) or by `lax.top_k` (a sort), per
               bank size M: the reader picks by rank up to
               `RANK_TOP_K_MAX_ENTRIES` entries of this platform

  python -m experiments.reader_ops [--batch=1024] [--repeats=31] [--out=F]
"""

import argparse
import functools
import shlex
import sys

import jax
import jax.numpy as jnp
import numpy as np

from adatape import elastic
from adatape import layers
from adatape import storage
from adatape import tape
from adatape.tape import reader


def _read_with(limit: int, cfg: tape.TapeConfig):
  """A jitted inference read whose top-k uses rank up to `limit` entries."""

  def read(query, bank):
    saved = reader.RANK_TOP_K_MAX_ENTRIES
    # Read while tracing, on whichever platform this runs.
    reader.RANK_TOP_K_MAX_ENTRIES = {layers.platform(): limit}
    try:
      return tape.read_tape(query, bank, cfg, exit_early=True)
    finally:
      reader.RANK_TOP_K_MAX_ENTRIES = saved

  return jax.jit(read)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=31)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  lines = []

  def report(line: str) -> None:
    print(line, flush=True)
    lines.append(line)

  report(f"# python -m experiments.reader_ops {shlex.join(argv)}")
  report(
      f"jax {jax.__version__} on {jax.devices()[0].device_kind}; batch "
      f"{args.batch}, width {args.width}; median of {args.repeats} "
      "interleaved rounds; ms"
  )
  # The parity model's reader: T = 8, epsilon = 2 (K = 4), d_k = D / 4.
  cfg = tape.TapeConfig(num_tokens=8, epsilon=2.0, key_split=4)
  rng = np.random.default_rng(0)
  query = jnp.asarray(rng.normal(size=(args.batch, args.width)), jnp.float32)
  report(
      f"\n## a whole read (T={cfg.num_tokens}, K={cfg.num_candidates}), "
      "top-k by rank vs by lax.top_k"
  )
  report(f"{'M':>5} {'rank':>8} {'lax':>8} {'rank/lax':>9}")
  for entries in (16, 32, 64, 128):
    bank = jnp.asarray(
        rng.normal(size=(args.batch, entries, args.width)), jnp.float32
    )
    reads = {"rank": _read_with(entries, cfg), "lax": _read_with(0, cfg)}
    seconds = elastic.median_times(
        {k: functools.partial(f, query, bank) for k, f in reads.items()},
        args.repeats,
    )
    ms = {k: v * 1e3 for k, v in seconds.items()}
    report(
        f"{entries:>5} {ms['rank']:8.2f} {ms['lax']:8.2f} "
        f"{ms['rank'] / ms['lax']:9.2f}"
    )
  report(
      f"(on {layers.platform()} the reader picks by rank up to M = "
      f"{reader.rank_top_k_limit()})"
  )

  if args.out:
    storage.write_atomic(args.out, "\n".join(lines) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
