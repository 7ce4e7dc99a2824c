"""Oracles: who labels the decoded cluster centres (Vengalil & Sinha sec 3.3: "the
resulting images were manually given a label and a confidence").

An oracle is any callable ``oracle(queries) -> iterable of Answer``, one answer per query in
order. It may be a generator: the loop records each answer as it arrives, so a session
interrupted half-way keeps what was answered.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import UserError
from ..runs.checkpoint import write_bytes_atomic


@dataclass(frozen=True)
class Answer:
    """An oracle's answer: a class id with confidence ``p_c`` in [0, 1], or invalid."""

    label: int | None
    confidence: float = 1.0

    @property
    def invalid(self) -> bool:
        return self.label is None

    @classmethod
    def invalid_centre(cls) -> Answer:
        return cls(None, 0.0)

    def to_dict(self) -> dict:
        return {"label": self.label, "confidence": self.confidence}


@dataclass
class Query:
    """One decoded cluster centre shown to the oracle.

    Attributes:
        id: ``"<iteration>/<cluster id>"``, e.g. ``"2/3.1"``; unique within a run.
        image: the decoded centre, flattened ``(D,)``.
        latent: the centre in latent space ``(Z,)``.
        image_shape: how to show the image (None: a row of pixels).
        nearest: ``nearest(m)`` gives the indices of the m training rows whose latent
            means lie nearest the centre (what a simulated oracle may look at).
    """

    id: str
    image: np.ndarray
    latent: np.ndarray
    image_shape: tuple[int, ...] | None = None
    nearest: Callable[[int], np.ndarray] = field(default=lambda m: np.zeros(0, int), repr=False)


class Oracle(Protocol):
    def __call__(self, queries: Sequence[Query]) -> Iterable[Answer]: ...


class SimulatedOracle:
    """Labels a centre from the ground truth of the training rows nearest it.

    Label: the majority true label of the ``neighbours`` rows nearest the centre in latent
    space; confidence ``p_c``: its share among them (purity); invalid below
    ``purity_threshold``, as a person shown a blend of two digits would say. It reads the
    labels of those rows only, never any other.
    """

    def __init__(
        self, labels: Sequence[int], neighbours: int = 10, purity_threshold: float = 0.5
    ) -> None:
        if neighbours < 1:
            raise UserError(f"neighbours={neighbours} must be >= 1")
        if not 0.0 <= purity_threshold <= 1.0:
            raise UserError(f"purity_threshold={purity_threshold} must be in [0, 1]")
        self.labels, self.neighbours, self.purity_threshold = labels, neighbours, purity_threshold

    def __call__(self, queries: Sequence[Query]) -> Iterator[Answer]:
        for query in queries:
            shown = [int(self.labels[int(i)]) for i in query.nearest(self.neighbours)]
            if not shown:
                yield Answer.invalid_centre()
                continue
            label, count = Counter(shown).most_common(1)[0]
            purity = count / len(shown)
            yield (
                Answer(label, purity)
                if purity >= self.purity_threshold
                else (Answer.invalid_centre())
            )


def parse_answer(line: str, num_classes: int | None = None) -> Answer:
    """``"label confidence"``, ``"label"`` (confidence 1) or ``"invalid"``."""
    parts = line.split()
    if parts == ["invalid"]:
        return Answer.invalid_centre()
    try:
        label = int(parts[0])
        confidence = float(parts[1]) if len(parts) == 2 else 1.0
        if len(parts) > 2:
            raise ValueError
    except (ValueError, IndexError):
        raise UserError(f"answer {line.strip()!r} not understood; write "
                        "'LABEL CONFIDENCE' (e.g. '3 0.9') or 'invalid'") from None  # fmt: skip
    if not 0.0 <= confidence <= 1.0:
        raise UserError(f"answer {line.strip()!r}: confidence must be in [0, 1]")
    if label < 0 or (num_classes is not None and label >= num_classes):
        top = "" if num_classes is None else f"..{num_classes - 1}"
        raise UserError(f"answer {line.strip()!r}: label must be a class id 0{top}")
    return Answer(label, confidence)


def read_answers(path: str | Path) -> list[str]:
    """The non-empty lines of an answers file; a UserError when it is missing or cannot be
    read as text (``run_active`` calls it before anything is written, so a typo in the
    path does not surface only after the unsupervised phase)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"answers file {path} not found; give an existing file") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = "not text" if isinstance(e, UnicodeDecodeError) else e.strerror or e
        raise UserError(f"answers file {path} cannot be read ({reason}); give a text file "
                        "with one answer per line") from None  # fmt: skip
    return [ln for ln in text.splitlines() if ln.strip()]


def answer_lines(path: str | Path, skip: int = 0) -> Iterator[str]:
    """The non-empty lines of an answers file after the first ``skip`` (answered already
    in an earlier session); at its end, a UserError saying what to add."""
    path = Path(path)
    lines = read_answers(path)
    yield from lines[skip:]
    raise UserError(f"{path} has {len(lines)} answers and the next query needs one more; "
                    "look at the centres' PNG in the run directory, append a line "
                    "('LABEL CONFIDENCE' or 'invalid') and resume")  # fmt: skip


def stdin_lines(prompt: Callable[[str], None] | None = None) -> Iterator[str]:
    """Lines typed on the terminal (prompts on stderr, so stdout stays clean)."""
    while True:
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            raise UserError("stdin closed before every centre had an answer; resume to go on")
        yield line


def save_grid(path: Path, queries: Sequence[Query]) -> None:
    """The centres as one PNG grid, each titled with its query id (written atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(queries), 8)
    rows = -(-len(queries) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, query in zip(axes.flat, queries, strict=False):
        shape = query.image_shape or (1, len(query.image))
        ax.imshow(np.asarray(query.image).reshape(shape[-2:]), cmap="gray", vmin=0, vmax=1)
        ax.set_title(query.id, fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


class HumanOracle:
    """A person at the terminal: the centres are written as a PNG grid, then one answer
    line per centre is read, in the grid's order.

    Args:
        out: folder for the PNGs (the run directory): ``centres-<first query>.png``.
        lines: where answers come from: ``stdin_lines()`` (default) or
            ``answer_lines(path, skip)``; any iterator of strings works.
        num_classes: refuse labels outside ``0..num_classes - 1``.
        retry: ask again after a line that cannot be read (a terminal) instead of raising
            (a file).
    """

    def __init__(
        self,
        out: str | Path,
        lines: Iterator[str] | None = None,
        num_classes: int | None = None,
        retry: bool | None = None,
    ) -> None:
        self.out, self.num_classes = Path(out), num_classes
        self.lines = stdin_lines() if lines is None else iter(lines)
        self.retry = lines is None if retry is None else retry

    def show(self, queries: Sequence[Query]) -> None:
        path = self.out / f"centres-{queries[0].id.replace('/', '-')}.png"
        save_grid(path, queries)
        print(f"{len(queries)} centres in {path}; answer each with 'LABEL CONFIDENCE' "
              "or 'invalid'", file=sys.stderr)  # fmt: skip

    def ask(self, query: Query) -> Answer:
        while True:
            print(f"{query.id}: ", end="", file=sys.stderr)
            line = next(self.lines)
            try:
                return parse_answer(line, self.num_classes)
            except UserError as e:
                if not self.retry:
                    raise
                print(e, file=sys.stderr)

    def __call__(self, queries: Sequence[Query]) -> Iterator[Answer]:
        if not queries:
            return
        self.show(queries)
        for query in queries:
            yield self.ask(query)


class NotebookOracle(HumanOracle):
    """A person in a notebook: the grid is displayed inline and answers are read with
    ``input()``."""

    def __init__(self, out: str | Path, num_classes: int | None = None) -> None:
        super().__init__(out, _input_lines(), num_classes, retry=True)

    def show(self, queries: Sequence[Query]) -> None:
        super().show(queries)
        path = self.out / f"centres-{queries[0].id.replace('/', '-')}.png"
        try:
            from IPython.display import Image, display

            display(Image(filename=str(path)))
        except ImportError:  # outside IPython the PNG's path (printed) has to do
            pass


def _input_lines() -> Iterator[str]:
    while True:
        yield input()
