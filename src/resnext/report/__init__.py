"""Reports from training logs and evaluation results: one self-contained HTML page plus PNG figures.

    read_log(path) -> RunLog                      the DLLogger log as one continuous timeline (no matplotlib)
    run_summary(run_log) -> dict                  its headline numbers (best top-1 and epoch, wall time, img/s)
    write_report(run_dirs, output=None) -> Path   index.html of one run, or of several overlaid
    write_evaluation_report(evaluation, output) -> Path   index.html for `resnext evaluate --report`
    write_evaluation(evaluation, path) -> Path    the evaluation JSON (WORKSPACE/evaluation.json joins the run's page)

Figures need matplotlib (`pip install "resnext[report]"`); reading logs does not.
"""
from .evaluation import EVALUATION_NAME, Evaluation, check_evaluation, read_evaluation, write_evaluation
from .figures import CONFUSION_SIZE, FIGURE_SIZE, MAX_CONFUSION_CLASSES
from .log import LOG_NAME, ResumePoint, RunLog, Session, find_log, read_log
from .page import png_size, run_summary, write_evaluation_report, write_report

__all__ = ["CONFUSION_SIZE", "EVALUATION_NAME", "FIGURE_SIZE", "LOG_NAME", "MAX_CONFUSION_CLASSES", "Evaluation",
           "ResumePoint", "RunLog", "Session", "check_evaluation", "find_log", "png_size", "read_evaluation",
           "read_log", "run_summary", "write_evaluation", "write_evaluation_report", "write_report"]
