"""A synthetic multichannel sequence dataset with class-dependent dynamics.

Stands in for UCI-HAR (which cannot be shipped) in tests and in the demo of the RNN
variant: same flattened ``(T, C)`` time-major layout and the same ``extra`` keys, but
small (4 channels x 48 steps) and generated on the fly from a fixed seed.

Every window is a sum of sinusoids with a random phase, amplitude and (slightly)
random frequency, plus AR(1) noise. The random phase makes every class mean close to
zero at every step, so the classes differ only in their dynamics:

================  ==========================================================
class             dynamics
================  ==========================================================
slow-in-phase     ~2 cycles per window, all channels in phase
slow-travelling   same frequency, channel c lags by c * 90 degrees
fast-in-phase     ~5 cycles per window, all channels in phase
chirp             frequency sweeps from ~1 to ~6 cycles across the window
mixed-rate        channels 0-1 at the slow rate, channels 2-3 at the fast rate
================  ==========================================================

Spectra alone separate four of the five classes; the first two share their spectra and
differ only in the phase relation between channels, which a model must see jointly
across channels (an LSTM does; per-channel features do not).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import Dataset

NAME = "sequences"
SEQUENCE_LENGTH = 48
CHANNEL_NAMES = ["s0", "s1", "s2", "s3"]
CLASS_NAMES = ["slow-in-phase", "slow-travelling", "fast-in-phase", "chirp", "mixed-rate"]
TRAIN_PER_CLASS = 600
TEST_PER_CLASS = 200
SLOW, FAST = 2.0, 5.0  # cycles per window
NOISE_AR, NOISE_SCALE = 0.5, 0.6  # stationary noise std 0.69 against signal rms ~0.7


def _generate(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Windows of shape (N, T, C) for the given class ids."""
    n, t_len, c_len = len(label), SEQUENCE_LENGTH, len(CHANNEL_NAMES)
    t = np.arange(t_len) / t_len  # time in windows, so frequencies are cycles per window
    channel = np.arange(c_len)

    # Per-window nuisance: a frequency jitter, a common phase and per-channel gains. The
    # uniform phase is what makes class means uninformative.
    jitter = rng.uniform(0.85, 1.15, size=(n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    gain = rng.uniform(0.7, 1.3, size=(n, 1, c_len))

    slow = 2 * np.pi * SLOW * jitter * t[None, :, None]  # (N, T, 1)
    fast = 2 * np.pi * FAST * jitter * t[None, :, None]
    # Instantaneous phase of a linear sweep 1 -> 6 cycles per window: 2pi (f0 t + (f1-f0) t^2 / 2).
    sweep = 2 * np.pi * jitter * (1.0 * t + 2.5 * t**2)[None, :, None]
    lag = (np.pi / 2) * channel[None, None, :]  # (1, 1, C)
    slow_channels = (channel < c_len // 2)[None, None, :]

    angle = np.select(
        [
            (label == 0)[:, None, None],
            (label == 1)[:, None, None],
            (label == 2)[:, None, None],
            (label == 3)[:, None, None],
        ],
        [
            np.broadcast_to(slow, (n, t_len, c_len)),
            slow - lag,
            np.broadcast_to(fast, (n, t_len, c_len)),
            np.broadcast_to(sweep, (n, t_len, c_len)),
        ],
        default=np.where(slow_channels, slow, fast),
    )
    signal = gain * np.sin(angle + phase)

    # AR(1) noise, started from its stationary distribution so early steps are not quieter.
    eps = rng.normal(0.0, NOISE_SCALE, size=(n, t_len, c_len))
    noise = np.empty_like(eps)
    noise[:, 0] = eps[:, 0] / np.sqrt(1 - NOISE_AR**2)
    for step in range(1, t_len):
        noise[:, step] = NOISE_AR * noise[:, step - 1] + eps[:, step]
    return signal + noise


def _split(per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.permutation(np.repeat(np.arange(len(CLASS_NAMES)), per_class)).astype(np.int64)
    x = _generate(y, rng)
    return x.reshape(len(y), -1).astype(np.float32), y


def load_sequences(data_dir: str | Path | None = None, *, seed: int = 0) -> Dataset:
    """The synthetic sequence dataset: 3000 train / 1000 test windows, balanced classes.

    Rows have length ``48 * 4`` and ``x.reshape(N, 48, 4)[:, t, c]`` is channel ``c`` at
    step ``t``, as for :func:`~ppl_ssvae.data.uci_har.load_uci_har`. The values are
    roughly unit-scale already, so no standardisation is applied.

    Args:
        data_dir: ignored (nothing is read from disk); accepted so every loader in
            ``DATASETS`` has the same signature.
        seed: the dataset is a pure function of it; keep the default so numbers from
            different runs are comparable.
    """
    # Independent streams for train and test, so changing one size never changes the other.
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    x_train, y_train = _split(TRAIN_PER_CLASS, train_rng)
    x_test, y_test = _split(TEST_PER_CLASS, test_rng)
    return Dataset(
        name=NAME,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=list(CLASS_NAMES),
        image_shape=None,
        support="real",
        default_validation_size=500,
        source=f"ppl_ssvae.data.sequences (synthetic, seed {seed})",
        extra={
            "sequence_channels": len(CHANNEL_NAMES),
            "sequence_length": SEQUENCE_LENGTH,
            "channel_names": list(CHANNEL_NAMES),
        },
    )
