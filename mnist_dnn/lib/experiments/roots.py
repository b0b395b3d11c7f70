"""The layout of a sweep's or a search's root folder: the one place that spells its names.

    sweep.json; or search.json and study.db (unless --storage)   a sweep (grid, base flags, runs); a search's study
    report.csv, report.md, report.png   the ranking (a search's adds optimization_history.png, param_importances.png)
    <run>/ckpt/ logs/ train.log result.json done.json   a run: a sweep's named by its combination, a search's trial-NNNN
"""

import os

SWEEP_FILE = "sweep.json"
SEARCH_FILE = "search.json"
STUDY_FILE = "study.db"
REPORT_CSV, REPORT_MD, REPORT_PNG = "report.csv", "report.md", "report.png"
STUDY_PLOTS = ("optimization_history.png", "param_importances.png")
TRIAL_PREFIX = "trial-"
CKPT_DIR = "ckpt"
LOGS_DIR = "logs"
LOG_FILE = "train.log"
RESULT_FILE = "result.json"
DONE_FILE = "done.json"


def run_dir(root: str, name: str) -> str:
    return os.path.join(root, name)


def trial_name(number: int) -> str:
    return f"{TRIAL_PREFIX}{number:04d}"
