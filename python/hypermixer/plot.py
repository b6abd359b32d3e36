"""Loss curves: a PNG through matplotlib when it is installed, otherwise a CSV of the numbers.

matplotlib is an optional dependency (``pip install hypermixer[plot]``) and is imported only
here, only when a plot is asked for.
"""

import csv
import sys
from pathlib import Path

_COLUMNS = ("model", "stage", "epoch", "step", "train_loss", "val_loss", "tokens", "seconds")


def write_csv(histories, path):
    """One row per recorded point of every model's history."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(_COLUMNS)
        for model, history in histories.items():
            for point in history:
                writer.writerow([model] + ["" if point.get(c) is None else point.get(c)
                                           for c in _COLUMNS[1:]])
    return path


def plot_history(histories, stem, log=None):
    """Plot train and validation loss against optimizer steps, for each named history.

    ``histories`` maps a model name to the list of points that training records. Writes
    ``<stem>.png``, or ``<stem>.csv`` (with a note on ``log``) when matplotlib is missing.
    Returns the path written.
    """
    stem = Path(stem)
    log = log if log is not None else sys.stderr
    try:
        import matplotlib
        matplotlib.use("Agg")   # files only; never open a window
        import matplotlib.pyplot as plt
    except ImportError:
        path = write_csv(histories, stem.with_suffix(".csv"))
        print(f"matplotlib is not installed, so no loss plot was drawn; the loss values are in "
              f"{path} (pip install matplotlib to get {stem.with_suffix('.png').name})",
              file=log, flush=True)
        return path

    figure, axes = plt.subplots(figsize=(8, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, (model, history) in enumerate(histories.items()):
        color = colors[number % len(colors)]
        # one segment per stage: each stage has its own validation set, so the curves of two
        # stages are not joined
        for stage_number, stage in enumerate(dict.fromkeys(p["stage"] for p in history)):
            points = [p for p in history if p["stage"] == stage]
            trained = [p for p in points if p.get("train_loss") is not None]
            first = stage_number == 0
            axes.plot([p["step"] for p in trained], [p["train_loss"] for p in trained],
                      color=color, linestyle="--", label=f"{model} train" if first else None)
            measured = [p for p in points if p.get("val_loss") is not None]
            if not measured:   # no validation data: only the training curve
                continue
            axes.plot([p["step"] for p in measured], [p["val_loss"] for p in measured],
                      color=color, marker="o", markersize=3,
                      label=f"{model} validation" if first else None)
            if not first:
                axes.axvline(points[0]["step"], color=color, alpha=0.3, linewidth=1)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy loss")
    axes.set_title("Loss per training stage (vertical line: next stage starts)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = stem.with_suffix(".png")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
