"""TapeConfig: every AdaTape knob, typed and validated once.

Its defaults are the official ImageNet configuration's (key split aside,
which is per model), and the one source of every tape default: config
files build their `tape` section from them (`configs/methods.py:tape`).

The names follow the paper's symbols (T, p, epsilon) where the official code's
names were misleading: `epsilon` is the halting *threshold*, 2.0 in the
official ImageNet config, not a small number.
"""

import dataclasses

from adatape import run_config

LOSS_TYPES = ("entropy", "max")
BANK_TYPES = ("input", "learn")
QUERY_TYPES = ("gap", "token")
EXIT_EARLY = ("auto", "always", "never")
# Platforms where the inference read exits early under `exit_early="auto"`.
# On the H200 the `while_loop` cost more than the reading steps it skipped:
# the parity model's padded forward took 2.3-2.4 ms with the scan and
# 3.3-3.5 ms with the early exit (1024 examples), AdaTape-S/16's 134.3
# against 153.5 ms (256 images, bfloat16; experiments/results/
# elastic_inference_parity_nvidia_h200_*.txt, elastic_inference_s16_nvidia_
# h200.txt, rows padded and padded+exit). On a CPU the two were level
# (101.7 and 101.7, 90.3 and 90.6, 91.3 and 87.6 ms,
# elastic_inference_parity.txt) and the loop skips more work the shorter
# the tapes are.
EXIT_EARLY_PLATFORMS = ("cpu",)


@dataclasses.dataclass(frozen=True)
class TapeConfig:
  """How the tape is read and where it enters the encoder.

  Attributes:
    bank: "input" (tokens cut from the input) or "learn" (a parameter).
    bank_size: number of learnable bank vectors M (learnable bank only).
    num_tokens: T, the maximum tape length.
    tokens_per_step: p, tape tokens emitted per reading step (T % p == 0).
    epsilon: halting threshold; the tape holds at least ceil(epsilon) tokens.
    adaptive: False replaces the adaptive reader by a fixed top-T selection.
    loss_type: per-step ATR loss, "entropy" (1 - sum w^2) or "max" (1 - max w).
    loss_weight: lambda, weight of the mean ATR loss in the training loss.
    query_type: "gap" (masked mean of the stream) or "token" (position 0).
    complex_query: True: q <- (q + key of read token) / 2; False: q <- key.
    query_noise: std of Gaussian noise added to the query in training.
    bank_dropout: probability of hiding each bank entry for one example.
    key_split: s; the first width / s channels are the keys. The official
      configuration sets s = number of heads (d_k = the head width), which
      depends on the model: configs pass it (`configs/methods.py:tape`).
    layers: encoder block indices before which a tape is appended (the
      official (1,): after the first block, which then sees only the main
      tokens).
    mlp_dim: hidden size of the GLU tape MLP applied after reading (0: off).
    encoder_mlp_dim: hidden size of the separate GLU tape FFN inside encoder
      blocks (0: tape tokens share the main FFN).
    dropout: dropout rate of both tape MLPs.
    legacy_flat_gather: reproduce the official code's flat gather of the
      selected scores
      that makes every example read example 0's scores. For measurement only.
    early_stop: in training, skip reading steps once the whole batch has
      halted (a `cond` inside the scan). The output is identical either
      way; only the work differs.
    exit_early: at inference, whether the reading loop stops once every
      example of the batch has halted (a `while_loop`): "always", "never"
      (all T / p steps, as training does), or "auto": on the platforms of
      `EXIT_EARLY_PLATFORMS`, where it was not the slower. Identical tapes
      either way.
    scan_unroll: reading steps per iteration of the reading scan (the
      `unroll` of `jax.lax.scan`) wherever the read does not exit early:
      1 runs a loop of T / p iterations; T / p or more writes every step
      out, so that XLA can fuse across steps and an accelerator launches
      no loop iterations. The tapes are the same either way (up to float
      reassociation); only the program differs.
  """

  bank: str = "input"
  bank_size: int = 0
  num_tokens: int = 8
  tokens_per_step: int = 1
  epsilon: float = 2.0
  adaptive: bool = True
  loss_type: str = "entropy"
  loss_weight: float = 0.01
  query_type: str = "gap"
  complex_query: bool = True
  query_noise: float = 0.0
  bank_dropout: float = 0.0
  key_split: int = 1
  layers: tuple[int, ...] = (1,)
  mlp_dim: int = 0
  encoder_mlp_dim: int = 0
  dropout: float = 0.0
  legacy_flat_gather: bool = False
  early_stop: bool = False
  exit_early: str = "auto"
  scan_unroll: int = 1

  def __post_init__(self):
    check = run_config.check
    run_config.check_choice("tape.bank", self.bank, BANK_TYPES)
    run_config.check_choice("tape.loss_type", self.loss_type, LOSS_TYPES)
    run_config.check_choice("tape.query_type", self.query_type, QUERY_TYPES)
    run_config.check_choice("tape.exit_early", self.exit_early, EXIT_EARLY)
    check(
        self.num_tokens >= 1, f"tape.num_tokens={self.num_tokens} must be >= 1"
    )
    check(
        self.tokens_per_step >= 1,
        f"tape.tokens_per_step={self.tokens_per_step} must be >= 1",
    )
    check(
        self.num_tokens % self.tokens_per_step == 0,
        f"tape.num_tokens={self.num_tokens} must be a multiple of "
        f"tape.tokens_per_step={self.tokens_per_step}",
    )
    check(
        self.scan_unroll >= 1,
        f"tape.scan_unroll={self.scan_unroll} must be >= 1 (1: a loop of "
        "T / p steps; T / p: no loop)",
    )
    check(self.epsilon > 0, f"tape.epsilon={self.epsilon} must be > 0")
    check(
        self.epsilon <= self.num_tokens,
        f"tape.epsilon={self.epsilon} must be <= tape.num_tokens="
        f"{self.num_tokens} (the halting threshold cannot exceed the tape)",
    )
    if self.adaptive:
      check(
          self.num_candidates >= self.tokens_per_step,
          f"tape.num_tokens / tape.epsilon = {self.num_candidates} "
          f"candidates per step must be >= tape.tokens_per_step="
          f"{self.tokens_per_step}",
      )
    check(
        0.0 <= self.bank_dropout < 1.0,
        f"tape.bank_dropout={self.bank_dropout} must be in [0, 1)",
    )
    check(
        self.query_noise >= 0,
        f"tape.query_noise={self.query_noise} must be >= 0",
    )
    check(self.key_split >= 1, f"tape.key_split={self.key_split} must be >= 1")
    check(len(self.layers) >= 1, "tape.layers must name at least one layer")
    check(
        len(set(self.layers)) == len(self.layers),
        f"tape.layers={self.layers} has duplicates",
    )
    check(
        self.mlp_dim >= 0 and self.encoder_mlp_dim >= 0,
        "tape.mlp_dim and tape.encoder_mlp_dim must be >= 0",
    )
    check(
        0.0 <= self.dropout < 1.0,
        f"tape.dropout={self.dropout} must be in [0, 1)",
    )
    check(
        self.loss_weight >= 0,
        f"tape.loss_weight={self.loss_weight} must be >= 0",
    )
    if self.bank == "learn":
      check(
          self.bank_size >= 1,
          f"tape.bank_size={self.bank_size} must be >= 1 for a learnable "
          "bank",
      )

  def exits_early(self, platform: str) -> bool:
    """Whether an inference read on `platform` (`layers.platform()`) stops
    once the batch has halted."""
    if self.exit_early == "auto":
      return platform in EXIT_EARLY_PLATFORMS
    return self.exit_early == "always"

  @property
  def num_steps(self) -> int:
    """Reading steps, T / p."""
    return self.num_tokens // self.tokens_per_step

  @property
  def num_candidates(self) -> int:
    """K = floor(T / epsilon): bank entries scored and merged per step."""
    return int(self.num_tokens // self.epsilon)

  def entries_read(self) -> int:
    """Distinct bank entries one example may consume while reading."""
    if not self.adaptive:
      return self.num_tokens
    return self.num_candidates * self.num_steps

  def check_bank(self, bank_size: int, width: int, what: str) -> None:
    """Rejects banks too small to read from without reuse (the official
    code then silently re-selected entries it had already read)."""
    need = self.entries_read()
    run_config.check(
        need <= bank_size,
        f"the bank ({what}) has {bank_size} entries but reading consumes up "
        f"to {need} (= floor(tape.num_tokens / tape.epsilon) * "
        f"tape.num_tokens / tape.tokens_per_step); lower tape.num_tokens or "
        f"raise tape.epsilon",
    )
    run_config.check(
        width % self.key_split == 0,
        f"tape.key_split={self.key_split} must divide the model width "
        f"{width}",
    )

  def check_layers(self, depth: int) -> None:
    run_config.check(
        all(0 <= layer < depth for layer in self.layers),
        f"tape.layers={self.layers} must be block indices in [0, {depth})",
    )
