"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend).

Every figure has a fixed size in pixels (FIGURE_SIZE, CONFUSION_SIZE) whatever the user's matplotlibrc says,
so pages look alike and tests can check the PNG header. The x axis of every training figure is in epochs, counted
as the console counts them: epoch n (from 1) ends at x = n (the log's 0-based epoch e at e + 1), and a
per-iteration point of that epoch lies at e + step / iterations_per_epoch. Several runs share the axes, one colour
per run. A loss axis whose values span more than LOG_SCALE_SPAN (a diverging first epoch next to a converged
run) is logarithmic, so the later epochs do not flatten into a line.
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass

from ..errors import UserError
from .evaluation import Evaluation
from .log import RunLog, number

DPI = 100
FIGURE_SIZE = (960, 540)  # pixels, every figure except the confusion matrix
CONFUSION_SIZE = (900, 900)
MAX_CONFUSION_CLASSES = 50  # past this a confusion matrix is unreadable: the page lists the worst classes instead
_BAR_CLASSES = 50  # up to this many classes get one labelled bar each; more get a sorted curve
_SMOOTHING_FRACTION = 0.02  # the smoothed loss averages over about 2% of the points shown
LOG_SCALE_SPAN = 10.0  # a loss axis whose largest value is over 10x its smallest becomes logarithmic


@dataclass
class Plot:
    name: str  # file name in the report folder
    title: str
    png: bytes


def smooth(values: list[float]) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing), its time constant 2% of the points.

    Scaling the constant with the number of points makes a 1,000-step and a 100,000-step run look alike.
    Non-finite values (a diverged step) do not enter the average; the smoothed curve holds its last value.
    """
    weight = max(0.0, 1.0 - 1.0 / (_SMOOTHING_FRACTION * len(values))) if values else 0.0
    smoothed, average, count = [], 0.0, 0
    for value in values:
        if math.isfinite(value):
            count += 1
            average = weight * average + (1.0 - weight) * value
        smoothed.append(average / (1.0 - weight ** count) if count else math.nan)
    return smoothed


def training_plots(runs: list[tuple[str, RunLog]]) -> list[Plot]:
    """The figures that have data in at least one run, in page order."""
    plots = []
    with _canvas() as new_figure:
        for name, title, draw in _TRAINING_FIGURES:
            figure = draw(new_figure, runs)
            if figure is not None:
                plots.append(Plot(name, title, _png(figure)))
    return plots


def evaluation_plots(evaluation: Evaluation) -> list[Plot]:
    plots = []
    with _canvas() as new_figure:
        if evaluation.per_class:
            plots.append(Plot("per_class_accuracy.png", "Per-class top-1 accuracy",
                              _png(_per_class(new_figure, evaluation))))
        if evaluation.confusion and len(evaluation.class_names) <= MAX_CONFUSION_CLASSES:
            plots.append(Plot("confusion_matrix.png", "Confusion matrix", _png(_confusion(new_figure, evaluation))))
    return plots


@contextlib.contextmanager
def _canvas():
    """Yield a figure factory under matplotlib's default style, whatever the user's matplotlibrc says."""
    try:
        import matplotlib
        import matplotlib.style
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError('reports need matplotlib; install it with: pip install "resnext[report]"') from None

    def new_figure(size=FIGURE_SIZE, columns=1):
        figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
        FigureCanvasAgg(figure)
        return figure, list(figure.subplots(1, columns, squeeze=False)[0])

    with matplotlib.style.context("default"):
        yield new_figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _plain(text: str) -> str:
    """Run and class names come from untrusted files: a '$' in them must not start mathtext (it may not parse)."""
    return text.replace("$", r"\$")


def _label(runs, label: str, what: str) -> str:
    return f"{_plain(label)}: {what}" if len(runs) > 1 else what


def _run_label(runs, label: str) -> str | None:
    return _plain(label) if len(runs) > 1 else None  # one run needs no legend


def _finish(axes, runs, ylabel: str) -> None:
    """Resume markers, labels, grid and legend, the same on every training axes."""
    for ax in axes:
        marked = False
        for index, (_, run) in enumerate(runs):
            for point in run.resume_points:
                ax.axvline(run.epoch_position(point.epoch, point.step_in_epoch), color=f"C{index}",
                           linestyle="--", linewidth=1.0, alpha=0.7, label=None if marked else "resumed")
                marked = True
        ax.set_xlabel("epoch")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if len(axes) == 1:
        axes[0].set_ylabel(ylabel)


def _loss_axis(ax, values: list[float]) -> str:
    """A logarithmic y axis, with plain-number ticks at 1, 2 and 5 per decade, when the losses span more than
    LOG_SCALE_SPAN; returns the axis label ("loss" or "loss (log scale)")."""
    positive = [value for value in values if math.isfinite(value) and value > 0]
    if not positive or max(positive) <= LOG_SCALE_SPAN * min(positive):
        return "loss"
    from matplotlib.ticker import LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10))))
    ax.yaxis.set_major_formatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_minor_formatter(lambda value, _: "")
    return "loss (log scale)"


def _plot(ax, xs, ys, **style) -> None:
    """Plot a series unless it is empty (a run without that metric gets no legend entry)."""
    if xs:
        ax.plot(xs, ys, **style)


def _series(run: RunLog, metric: str) -> tuple[list[float], list[float]]:
    """Per-iteration points of a metric, or its epoch-end points when the log has no per-iteration ones."""
    xs, ys = run.iteration_series(metric)
    return (xs, ys) if xs else run.epoch_series(metric)


def _train_loss(new_figure, runs):
    if not any(run.iteration_series("train.loss")[0] or run.epoch_series("train.loss")[0] for _, run in runs):
        return None
    figure, axes = new_figure()
    ax = axes[0]
    shown: list[float] = []
    for index, (label, run) in enumerate(runs):
        color = f"C{index}"
        xs, ys = run.iteration_series("train.loss")
        shown += ys
        if len(xs) * _SMOOTHING_FRACTION > 1:
            ax.plot(xs, ys, color=color, alpha=0.3, linewidth=0.8, label=_label(runs, label, "per iteration"))
            ax.plot(xs, smooth(ys), color=color, linewidth=1.8, label=_label(runs, label, "smoothed"))
        else:  # too few points to smooth: the raw curve is the curve
            _plot(ax, xs, ys, color=color, linewidth=1.5, label=_label(runs, label, "per iteration"))
        xs, ys = run.epoch_series("train.loss")
        shown += ys
        if xs:
            ax.plot(xs, ys, color=color, linestyle="none", marker="o", markerfacecolor="white",
                    label=_label(runs, label, "epoch mean"))
    ax.set_title("Training loss")
    _finish(axes, runs, _loss_axis(ax, shown))
    return figure


def _val_accuracy(new_figure, runs):
    if not any(run.epoch_series("val.top1")[0] or run.epoch_series("val.top5")[0] for _, run in runs):
        return None
    figure, axes = new_figure(columns=2)
    for ax, top in zip(axes, ("top1", "top5")):
        name = "top-1" if top == "top1" else "top-5"
        for index, (label, run) in enumerate(runs):
            color = f"C{index}"
            xs, ys = run.epoch_series(f"val.{top}")
            _plot(ax, xs, ys, color=color, marker="o", markersize=4, label=_label(runs, label, "model"))
            _plot(ax, *run.epoch_series(f"val_ema.{top}"), color=color, linestyle=":", marker="s", markersize=4,
                  label=_label(runs, label, "EMA"))
            best = run.best_epoch(f"val.{top}")
            if best is not None:
                value = number(run.epochs[best][f"val.{top}"])
                ax.plot(best + 1, value, color=color, marker="*", markersize=14, linestyle="none",
                        label=_label(runs, label, f"best {name}: {value:.2f} at epoch {best + 1}"))
            best_top1 = run.best_epoch("val.top1")
            if top == "top5" and best_top1 is not None:
                # Where the summary's "top-5 at the best top-1 epoch" is read off.
                ax.axvline(best_top1 + 1, color=color, linestyle=":", linewidth=1.2, alpha=0.8,
                           label=_label(runs, label, f"best top-1 epoch ({best_top1 + 1})"))
        ax.set_title(f"Validation {name}")
        ax.set_ylabel(f"{name} accuracy (%)")
    _finish(axes, runs, "")
    return figure


def _val_loss(new_figure, runs):
    if not any(run.epoch_series("val.loss")[0] for _, run in runs):
        return None
    figure, axes = new_figure()
    shown: list[float] = []
    for index, (label, run) in enumerate(runs):
        for metric, style in (("val.loss", dict(marker="o", label=_label(runs, label, "model"))),
                              ("val_ema.loss", dict(linestyle=":", marker="s", label=_label(runs, label, "EMA")))):
            xs, ys = run.epoch_series(metric)
            shown += ys
            _plot(axes[0], xs, ys, color=f"C{index}", markersize=4, **style)
    axes[0].set_title("Validation loss")
    _finish(axes, runs, _loss_axis(axes[0], shown))
    return figure


def _learning_rate(new_figure, runs):
    if not any(_series(run, "train.lr")[0] for _, run in runs):
        return None
    figure, axes = new_figure()
    for index, (label, run) in enumerate(runs):
        _plot(axes[0], *_series(run, "train.lr"), color=f"C{index}", label=_run_label(runs, label))
    axes[0].set_title("Learning rate")
    _finish(axes, runs, "learning rate")
    return figure


def _loss_scale(new_figure, runs):
    if not any(_series(run, "train.grad_scale")[0] for _, run in runs):
        return None  # no fp16 AMP run: there is no loss scale to show
    figure, axes = new_figure()
    for index, (label, run) in enumerate(runs):
        _plot(axes[0], *_series(run, "train.grad_scale"), color=f"C{index}", drawstyle="steps-post",
              label=_run_label(runs, label))
    axes[0].set_yscale("log", base=2)
    axes[0].yaxis.set_major_formatter(lambda value, _: f"{value:,.0f}")  # 65,536 rather than 2^16
    axes[0].set_title("Dynamic loss scale (drops mark overflowing steps)")
    _finish(axes, runs, "loss scale")
    return figure


def _throughput(new_figure, runs):
    metrics = ("train.compute_ips", "train.total_ips", "train.compute_time", "train.data_time")
    if not any(_series(run, metric)[0] for _, run in runs for metric in metrics):
        return None
    figure, (speed, times) = new_figure(columns=2)
    for index, (label, run) in enumerate(runs):
        color = f"C{index}"
        _plot(speed, *_series(run, "train.compute_ips"), color=color, label=_label(runs, label, "compute"))
        _plot(speed, *_series(run, "train.total_ips"), color=color, linestyle="--",
              label=_label(runs, label, "total (with data loading)"))
        _plot(times, *_series(run, "train.compute_time"), color=color, label=_label(runs, label, "compute"))
        _plot(times, *_series(run, "train.data_time"), color=color, linestyle="--",
              label=_label(runs, label, "waiting for data"))
    speed.set_title("Training throughput: a gap means data-bound")
    speed.set_ylabel("images per second")
    speed.set_ylim(bottom=0)
    times.set_title("Time per step")
    times.set_ylabel("seconds")
    times.set_ylim(bottom=0)
    _finish([speed, times], runs, "")
    return figure


def _per_class(new_figure, evaluation: Evaluation):
    figure, axes = new_figure()
    ax = axes[0]
    classes = sorted(evaluation.per_class, key=lambda item: item.top1)
    if len(classes) <= _BAR_CLASSES:
        positions = range(len(classes))
        ax.bar(positions, [item.top1 for item in classes], color="C0")
        ax.set_xticks(list(positions), [_short(item.name) for item in classes], rotation=90,
                      fontsize=8 if len(classes) <= 20 else 6)
        ax.set_xlabel("class (worst to best)")
    else:
        ax.plot(range(1, len(classes) + 1), [item.top1 for item in classes], color="C0")
        ax.set_xlabel("class rank (worst to best)")
        ax.set_xlim(1, len(classes))
    if evaluation.top1 is not None:
        ax.axhline(evaluation.top1, color="C1", linestyle="--", label=f"overall top-1 {evaluation.top1:.2f}%")
        ax.legend(fontsize="small")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Per-class top-1 accuracy ({len(classes)} classes)")
    ax.grid(axis="y", alpha=0.3)
    return figure


def _confusion(new_figure, evaluation: Evaluation):
    figure, axes = new_figure(CONFUSION_SIZE)
    ax = axes[0]
    counts = evaluation.confusion
    # Colour by the share of each true class, so rare and common classes read on the same scale.
    shares = [[value / sum(row) if sum(row) else 0.0 for value in row] for row in counts]
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class's images")
    size = len(counts)
    names = [_short(name) for name in evaluation.class_names]
    fontsize = 8 if size <= 20 else 5
    ax.set_xticks(range(size), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(size), names, fontsize=fontsize)
    if size <= 20:  # room for the counts themselves
        for row, values in enumerate(counts):
            for column, value in enumerate(values):
                ax.text(column, row, f"{value:g}", ha="center", va="center", fontsize=7,
                        color="white" if shares[row][column] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (rows: true class)")
    return figure


_TRAINING_FIGURES = [("train_loss.png", "Training loss", _train_loss),
                     ("val_accuracy.png", "Validation accuracy", _val_accuracy),
                     ("val_loss.png", "Validation loss", _val_loss),
                     ("learning_rate.png", "Learning rate", _learning_rate),
                     ("loss_scale.png", "Loss scale (fp16 AMP)", _loss_scale),
                     ("throughput.png", "Throughput and time per step", _throughput)]
TRAINING_FIGURE_NAMES = [name for name, _, _ in _TRAINING_FIGURES]
EVALUATION_FIGURE_NAMES = ["per_class_accuracy.png", "confusion_matrix.png"]


def _short(name: str, limit: int = 24) -> str:
    return _plain(name if len(name) <= limit else name[: limit - 1] + "…")
