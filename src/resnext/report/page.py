"""Summary numbers of a run and the self-contained HTML page that shows them with the figures.

The page embeds its PNGs (base64), so it can be mailed as one file; the same PNGs are written beside it.
Every string that comes from a log or an evaluation file is untrusted and goes through html.escape.
Each summary cell carries the exact logged value in `data-value`; the text shown is that value formatted. Epochs
are shown as the console counts them, from 1 (the log's epoch e is "epoch e + 1"), while `data-value` and
run_summary keep the log's 0-based number.
"""
from __future__ import annotations

import base64
import datetime
import html
import json
import logging
import math
import struct
from pathlib import Path

from ..paths import atomic_write
from ..errors import UserError
from .evaluation import EVALUATION_NAME, Evaluation, check_evaluation, read_evaluation
from .figures import (EVALUATION_FIGURE_NAMES, MAX_CONFUSION_CLASSES, TRAINING_FIGURE_NAMES, Plot,
                      evaluation_plots, training_plots)
from .log import RunLog, number, read_log

logger = logging.getLogger("resnext.report")

_DATA_BOUND = 0.85  # total img/s below this share of compute img/s: the loader, not the model, sets the pace


def run_summary(run: RunLog) -> dict:
    """The headline numbers of a run (None where the log does not have them yet).

    Values of the end-of-run entry win when it exists (best.top1, best.epoch, best.top5 and train.total_ips);
    before the run ends they come from the epoch entries: the best is the epoch with the highest val.top1 (the
    earliest on a tie), throughputs and times are means over the epochs (over the logged iterations while no
    epoch has finished). "best.top5" is the top-5 of that best top-1 epoch (what the end-of-run entry logs);
    "best_top5.top5" / "best_top5.epoch" are the highest top-5 and its epoch, which the top-5 figure marks.
    Epoch numbers are 0-based, as logged (the page shows them + 1, as the console). The wall time adds up all
    sessions of a resumed run (each session's largest elapsedtime), including the work a resume redid.
    """
    final, parameters = run.summary, run.parameters
    best = run.best_epoch("val.top1")
    best_top5 = run.best_epoch("val.top5")
    best_ema = run.best_epoch("val_ema.top1")
    last_val = max((epoch for epoch, data in run.epochs.items() if number(data.get("val.top1")) is not None),
                   default=None)
    best_epoch = final.get("best.epoch")
    if isinstance(best_epoch, int) and not isinstance(best_epoch, bool) and best_epoch < 0:
        final = {}  # training logs best.epoch -1 (and best.top1 0) when no epoch was validated
    if isinstance(best_epoch, bool) or not isinstance(best_epoch, int) or best_epoch < 0:
        best_epoch = best
    summary = {
        "status": str(run.summary.get("exit.reason") or "finished") if run.finished else "in progress",
        "arch": parameters.get("arch"),
        "precision": parameters.get("precision"),
        "global_batch_size": parameters.get("global_batch_size"),
        "world_size": parameters.get("world_size"),
        "device_name": parameters.get("device_name"),
        "epochs_finished": len(run.epochs),
        "epochs_planned": parameters.get("epochs"),
        "progress": run.progress,
        "resumes": len(run.resume_points),
        "best.top1": _first(number(final.get("best.top1")), _at(run, best, "val.top1")),
        "best.epoch": best_epoch,
        "best.top5": _first(number(final.get("best.top5")), _at(run, best_epoch, "val.top5")),
        "best_top5.top5": _at(run, best_top5, "val.top5"),
        "best_top5.epoch": best_top5,
        "last.val.top1": _at(run, last_val, "val.top1"),
        "last.val.top5": _at(run, last_val, "val.top5"),
        "best_ema.top1": _at(run, best_ema, "val_ema.top1"),
        "best_ema.epoch": best_ema,
        "wall_time": run.wall_time if run.sessions else None,
        "train.total_ips": _first(number(final.get("train.total_ips")), _mean(run, "train.total_ips")),
        "train.compute_ips": _mean(run, "train.compute_ips"),
        "train.data_time": _mean(run, "train.data_time"),
        "train.compute_time": _mean(run, "train.compute_time"),
        "val.total_ips": _at(run, last_val, "val.total_ips"),
    }
    data_time, compute_time = summary["train.data_time"], summary["train.compute_time"]
    summary["data_wait_share"] = (data_time / (data_time + compute_time)
                                  if data_time is not None and compute_time and data_time + compute_time > 0
                                  else None)
    return summary


def _first(*values):
    return next((value for value in values if value is not None), None)


def _at(run: RunLog, epoch: int | None, metric: str) -> float | None:
    return None if epoch is None else number(run.epochs[epoch].get(metric))


def _mean(run: RunLog, metric: str) -> float | None:
    values = [v for v in run.epoch_series(metric)[1] if math.isfinite(v)]
    if not values:
        values = [v for v in run.iteration_series(metric)[1] if math.isfinite(v)]
    return sum(values) / len(values) if values else None


# ---- writing -----------------------------------------------------------------------------------------------

def write_report(run_dirs: list[Path], output: Path | None = None) -> Path:
    """Write the training report of one run, or of several overlaid, and return the path of its index.html.

    A run is a training workspace (holding experiment_raport.json) or the log file itself; its evaluation.json,
    when present beside the log, adds the evaluation numbers (and, for a single run, its per-class figures).
    The default output for one run is RUN_DIR/report/; several runs need `output`.
    """
    run_dirs = [Path(path) for path in run_dirs]
    if not run_dirs:
        raise UserError("give at least one training workspace (or log file) to report on.")
    if output is None and len(run_dirs) > 1:
        raise UserError("several runs are compared in one new folder: choose it with --output DIR.")
    runs = [read_log(path) for path in run_dirs]
    output = Path(output) if output is not None else runs[0].path.parent / "report"
    labels = _labels([run.path for run in runs])
    evaluations = [_evaluation_beside(run) for run in runs]
    named = list(zip(labels, runs))

    plots = training_plots(named)
    sections = [_summary_section(named, evaluations), _figures_section(plots, _figure_notes(named))]
    if len(runs) == 1 and evaluations[0] is not None:
        evaluation_figures = evaluation_plots(evaluations[0])
        plots += evaluation_figures
        sections.append(_evaluation_section(evaluations[0], evaluation_figures))
    sections.append(_configuration_section(named))
    title = "Training report: " + " vs ".join(labels)
    sources = ", ".join(str(run.path) for run in runs)
    page = _page(title, sources, _notes(named), sections)
    return _write(output, plots, page, owned=TRAINING_FIGURE_NAMES + EVALUATION_FIGURE_NAMES)


def write_evaluation_report(evaluation: dict, output: Path) -> Path:
    """Write the report of `resnext evaluate` (its JSON dict) into `output`; returns the path of index.html."""
    checked = check_evaluation(evaluation)
    plots = evaluation_plots(checked)
    title = "Evaluation report" + (f": {checked.arch}" if checked.arch else "")
    source = checked.weights or "evaluation results"
    page = _page(title, source, [], [_evaluation_section(checked, plots)])
    return _write(Path(output), plots, page, owned=EVALUATION_FIGURE_NAMES)


def _write(output: Path, plots: list[Plot], page: str, owned: list[str]) -> Path:
    """Figures first, then the page, each atomically; figures an earlier report left and this one lacks go."""
    output.mkdir(parents=True, exist_ok=True)
    for plot in plots:
        atomic_write(output / plot.name, lambda handle, data=plot.png: handle.write(data))
    written = {plot.name for plot in plots}
    for name in owned:
        if name not in written:
            (output / name).unlink(missing_ok=True)
    return atomic_write(output / "index.html", lambda handle: handle.write(page.encode("utf-8")))


def _labels(paths: list[Path]) -> list[str]:
    """Run names for legends: the workspace folder name, with more of the path where names collide."""
    labels = [path.parent.name or str(path.parent) for path in paths]
    longer = [f"{path.parent.parent.name}/{path.parent.name}" for path in paths]
    if len(set(longer)) > len(set(labels)):
        labels = longer
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return unique


def _evaluation_beside(run: RunLog) -> Evaluation | None:
    path = run.path.parent / EVALUATION_NAME
    if not path.is_file():
        return None
    try:
        return read_evaluation(path)
    except UserError as err:  # a broken evaluation file must not cost the user the training report
        logger.warning("%s The report leaves the evaluation out.", err)
        return None


# ---- HTML --------------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td[data-value] { text-align: right; font-variant-numeric: tabular-nums; }
tr.differs { background: #fff4cc; }
.note { background: #eef4ff; border-left: 4px solid #4a7bd0; padding: 0.4em 0.8em; margin: 0.4em 0; }
.warning { background: #fff0e6; border-left-color: #d9822b; }
figure { margin: 1.5em 0; } img { max-width: 100%; height: auto; } .meta { color: #666; font-size: 0.9em; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, source: str, notes: list[tuple[str, str]], sections: list[str]) -> str:
    from .. import __version__  # here, not at the top: resnext/__init__.py imports this module before defining it

    generated = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    note_html = "".join(f'<p class="{kind}">{_e(text)}</p>\n' for kind, text in notes)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{_e(title)}</title>\n"
            f"<style>{_STYLE}</style>\n</head>\n<body>\n<h1>{_e(title)}</h1>\n"
            f"<p class=\"meta\">From {_e(source)}; written by resnext {_e(__version__)} on {_e(generated)}.</p>\n"
            f"{note_html}{''.join(sections)}</body>\n</html>\n")


def _notes(runs: list[tuple[str, RunLog]]) -> list[tuple[str, str]]:
    """(CSS class, text) of what a reader must know first: a run in progress, resumes, skipped lines, data-bound."""
    notes = []
    for label, run in runs:
        summary = run_summary(run)
        if not run.finished:
            where = (f"last entry at epoch {summary['progress']:.2f}" + (f", {run.last_datetime}"
                                                                        if run.last_datetime else ""))
            notes.append(("note", f"{label}: run in progress (or interrupted): no end-of-run summary yet; {where}."))
        if not any(number(data.get("val.top1")) is not None for data in run.epochs.values()):
            notes.append(("note", f"{label}: no validation yet."))
        for point in run.resume_points:
            notes.append(("note", f"{label}: resumed at epoch {point.epoch + 1} step {point.step_in_epoch}"
                              + (f" from {point.checkpoint}" if point.checkpoint else "")
                              + "; the curves continue through it (dashed line)."))
        restarted = [session for session in run.sessions[1:] if session.resume is None and session.superseded]
        if restarted:
            notes.append(("note warning", f"{label}: the log holds a later run started from scratch; the "
                                     f"{sum(s.superseded for s in restarted)} entries before it are not shown."))
        if run.skipped_lines:
            notes.append(("note warning", f"{label}: {len(run.skipped_lines)} malformed log line(s) skipped."))
        total, compute = summary["train.total_ips"], summary["train.compute_ips"]
        if total is not None and compute and total < _DATA_BOUND * compute:
            notes.append(("note warning", f"{label}: data-bound: training ran at {total:,.0f} img/s while the model "
                                     f"alone ran at {compute:,.0f} img/s; the data loader sets the pace (more "
                                     "--workers, DALI or the GPU decoder would help)."))
    return notes


def _figure_notes(runs: list[tuple[str, RunLog]]) -> list[str]:
    if any(number(data.get("train.grad_scale")) is not None
           for _, run in runs for data in list(run.iterations.values()) + list(run.epochs.values())):
        return []
    return ["No loss-scale figure: no run used fp16 AMP (bf16, TF32 and FP32 need no loss scaling)."]


def _cell(value, text: str | None = None) -> str:
    if value is None:
        return "<td>–</td>"
    raw = value if isinstance(value, str) else json.dumps(value)
    return f'<td data-value="{_e(raw)}">{_e(text if text is not None else value)}</td>'


def _fixed(digits: int):
    return lambda value: f"{value:.{digits}f}"


def _thousands(value: float) -> str:
    return f"{value:,.1f}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return str(seconds)
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _share(value: float) -> str:
    return f"{value:.0%}"


def _epoch(value: int) -> str:
    """A logged (0-based) epoch as people and the console count it: the log's epoch 11 is the 12th."""
    return str(value + 1)


# key, label, formatter (None: shown as is)
_SUMMARY_ROWS = [
    ("status", "Status", None),
    ("arch", "Architecture", None),
    ("precision", "Precision", None),
    ("global_batch_size", "Global batch size", None),
    ("world_size", "Processes", None),
    ("device_name", "Device", None),
    ("epochs_finished", "Epochs finished", None),
    ("epochs_planned", "Epochs planned", None),
    ("progress", "Progress (epochs)", _fixed(2)),
    ("resumes", "Resumes", None),
    ("best.top1", "Best top-1 (%)", _fixed(2)),
    ("best.epoch", "Best top-1: epoch (from 1)", _epoch),
    ("best.top5", "Top-5 at the best top-1 epoch (%)", _fixed(2)),
    ("best_top5.top5", "Best top-5 (%)", _fixed(2)),
    ("best_top5.epoch", "Best top-5: epoch (from 1)", _epoch),
    ("last.val.top1", "Last top-1 (%)", _fixed(2)),
    ("last.val.top5", "Last top-5 (%)", _fixed(2)),
    ("best_ema.top1", "Best EMA top-1 (%)", _fixed(2)),
    ("best_ema.epoch", "Best EMA top-1: epoch (from 1)", _epoch),
    ("wall_time", "Wall time, all sessions (h:mm:ss)", _duration),
    ("train.total_ips", "Training img/s (total, mean)", _thousands),
    ("train.compute_ips", "Training img/s (compute only, mean)", _thousands),
    ("train.data_time", "Data wait per step (s, mean)", _fixed(4)),
    ("train.compute_time", "Compute per step (s, mean)", _fixed(4)),
    ("data_wait_share", "Share of step time waiting for data", _share),
    ("val.total_ips", "Validation img/s (last epoch)", _thousands),
    ("evaluation.top1", "Evaluation top-1 (%)", _fixed(2)),
    ("evaluation.top5", "Evaluation top-5 (%)", _fixed(2)),
    ("evaluation.images", "Evaluation images", None),
]


def _summary_section(runs: list[tuple[str, RunLog]], evaluations: list[Evaluation | None]) -> str:
    columns = []
    for (_, run), evaluation in zip(runs, evaluations):
        values = run_summary(run)
        if evaluation is not None:
            values.update({"evaluation.top1": evaluation.top1, "evaluation.top5": evaluation.top5,
                           "evaluation.images": evaluation.images})
        columns.append(values)
    header = "".join(f'<th scope="col" title="{_e(run.path)}">{_e(label)}</th>' for label, run in runs)
    rows = []
    for key, label, formatter in _SUMMARY_ROWS:
        values = [column.get(key) for column in columns]
        if all(value is None for value in values):
            continue  # nothing any run can say (no EMA, no evaluation): leave the row out
        cells = "".join(_cell(value, formatter(value) if formatter and value is not None else None)
                        for value in values)
        rows.append(f'<tr data-key="{_e(key)}"><th scope="row">{_e(label)}</th>{cells}</tr>\n')
    return (f'<h2>Summary</h2>\n<table id="summary">\n<thead><tr><th></th>{header}</tr></thead>\n<tbody>\n'
            f"{''.join(rows)}</tbody>\n</table>\n")


def _figures_section(plots: list[Plot], notes: list[str]) -> str:
    figures = "".join(_figure(plot) for plot in plots)
    note_html = "".join(f'<p class="note">{_e(text)}</p>\n' for text in notes)
    if not plots:
        note_html += '<p class="note">No figures yet: the log has no training steps.</p>\n'
    return f"<h2>Figures</h2>\n{note_html}{figures}"


def _figure(plot: Plot) -> str:
    width, height = png_size(plot.png)
    data = base64.b64encode(plot.png).decode("ascii")
    return (f'<figure id="fig-{_e(plot.name[:-4])}"><img src="data:image/png;base64,{data}" width="{width}" '
            f'height="{height}" alt="{_e(plot.title)}"><figcaption>{_e(plot.title)} '
            f'(<a href="{_e(plot.name)}">{_e(plot.name)}</a>)</figcaption></figure>\n')


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    return struct.unpack(">II", png[16:24])


def _configuration_section(runs: list[tuple[str, RunLog]]) -> str:
    keys = sorted({key for _, run in runs for key in run.parameters})
    if not keys:
        return "<h2>Configuration</h2>\n<p class=\"note\">The log holds no run arguments (PARAMETER entry).</p>\n"
    header = "".join(f'<th scope="col">{_e(label)}</th>' for label, _ in runs)
    rows = []
    for key in keys:
        values = [_parameter_text(run.parameters, key) for _, run in runs]
        differs = ' class="differs"' if len(runs) > 1 and len(set(values)) > 1 else ""
        cells = "".join(f"<td>{_e(value)}</td>" for value in values)
        rows.append(f'<tr{differs} data-key="{_e(key)}"><th scope="row">{_e(key)}</th>{cells}</tr>\n')
    legend = "<p>Highlighted rows differ between the runs.</p>\n" if len(runs) > 1 else ""
    return (f'<h2>Configuration</h2>\n{legend}<table id="configuration">\n<thead><tr><th>argument</th>{header}'
            f"</tr></thead>\n<tbody>\n{''.join(rows)}</tbody>\n</table>\n")


def _parameter_text(parameters: dict, key: str) -> str:
    if key not in parameters:
        return "–"
    value = parameters[key]
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _evaluation_section(evaluation: Evaluation, plots: list[Plot]) -> str:
    rows = [("top1", "Top-1 (%)", evaluation.top1, _fixed(2)), ("top5", "Top-5 (%)", evaluation.top5, _fixed(2)),
            ("loss", "Loss", evaluation.loss, _fixed(4)), ("images", "Images", evaluation.images, None),
            ("img_s", "Images per second", evaluation.img_s, _thousands)]
    rows += [(f"latency_ms.{name}", f"Latency {name} (ms per batch)", value, _fixed(2))
             for name, value in evaluation.latency_ms.items()]
    rows += [("arch", "Architecture", evaluation.arch, None), ("weights", "Weights", evaluation.weights, None)]
    table = "".join(f'<tr data-key="{_e(key)}"><th scope="row">{_e(label)}</th>'
                    f"{_cell(value, formatter(value) if formatter and value is not None else None)}</tr>\n"
                    for key, label, value, formatter in rows if value is not None)
    parts = [f'<h2>Evaluation</h2>\n<table id="evaluation">\n<tbody>\n{table}</tbody>\n</table>\n']
    if evaluation.confusion is not None and len(evaluation.class_names) > MAX_CONFUSION_CLASSES:
        parts.append(f'<p class="note">No confusion matrix figure: {len(evaluation.class_names)} classes are more '
                     f"than {MAX_CONFUSION_CLASSES}; the per-class table below lists the weakest first.</p>\n")
    parts += [_figure(plot) for plot in plots]
    if evaluation.per_class:
        classes = sorted(evaluation.per_class, key=lambda item: (item.top1, item.name))
        body = "".join(f"<tr><th scope=\"row\">{_e(item.name)}</th>{_cell(item.images)}"
                       f"{_cell(item.top1, f'{item.top1:.2f}')}</tr>\n" for item in classes)
        parts.append('<h3>Per-class accuracy (weakest first)</h3>\n<table id="per-class">\n<thead><tr><th>class</th>'
                     f"<th>images</th><th>top-1 (%)</th></tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n")
    return "".join(parts)
