"""`curves.png`: losses, learning rate and AP against iterations, from Detectron2's metrics.json."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    """Detectron2's JSONWriter appends one JSON object per line; a torn line (or one that is not an
    object, or not text) is skipped: a damaged file costs its plot lines, not the run."""
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def plot_curves(output_dir: Path) -> Path | None:
    metrics = Path(output_dir) / "metrics.json"
    if not metrics.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics)
    losses = sorted({k for row in rows for k in row if k.startswith("loss_") or k == "total_loss"})
    aps = [k for k in ("bbox/AP", "segm/AP") if any(k in row for row in rows)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))

    def series(key):
        points = [(row["iteration"], row[key]) for row in rows if key in row and "iteration" in row]
        return zip(*points) if points else ((), ())

    plotted = False
    positive = False
    for key in losses:
        _, values = series(key)
        plotted |= bool(values)
        positive |= any(isinstance(v, (int, float)) and v > 0 for v in values)
        axes[0].plot(*series(key), label=key, linewidth=2 if key == "total_loss" else 1)
    axes[0].set(title="losses", xlabel="iteration", yscale="log" if positive else "linear")
    if plotted:
        axes[0].legend(fontsize=7)
    axes[1].plot(*series("lr"))
    axes[1].set(title="learning rate", xlabel="iteration")
    for key in aps:
        axes[2].plot(*series(key), marker="o", label=key)
    axes[2].set(title="validation AP", xlabel="iteration")
    if aps:
        axes[2].legend()
    fig.tight_layout()
    out = Path(output_dir) / "curves.png"
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def save_figure(figure, path, dpi: int = 80) -> Path:
    """Write a matplotlib figure to `path` (its suffix names the format, PNG without one); one line on failure."""
    from .errors import MaskinitError, one_line

    path = Path(path)
    if path.is_dir():
        raise MaskinitError(f"cannot write plot {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # An explicit format: matplotlib would otherwise append ".png" to a name without a suffix.
        figure.savefig(path, dpi=dpi, format=path.suffix[1:].lower() or "png")
    except (OSError, ValueError) as error:
        raise MaskinitError(f"cannot write plot {path}: {one_line(error)}") from error
    return path
