"""The rows every fit reads: loading a sweep's results.jsonl or a CSV, keeping the usable rows, averaging
seeds, and reducing each model to its best setting."""

import csv
import json
import math

import numpy as np

REQUIRED_KEYS = ("budget", "N", "D", "C", "eval_loss")
CSV_COLUMNS = ("params", "tokens", "loss")


class FitError(ValueError):
    """Rows that cannot be read, or too few of them for a fit; the message names the input and the need."""


def load_results(path: str) -> list[dict]:
    """The trial rows of a sweep's results.jsonl (one JSON object per line; blank lines skipped)."""
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise FitError(f"{path}: no such results file; run the sweep first or pass its results.jsonl") from None
    rows = []
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise FitError(f"{path}:{lineno}: not a JSON object ({e.msg}); fix or delete that line") from None
    return rows


def load_csv(path: str) -> list[dict]:
    """Rows from a CSV with columns params, tokens, loss and optionally budget, flops, lr, batch_size.

    `flops` is the realised training compute (default 6 * params * tokens); `budget` groups IsoFLOP
    profiles (default: flops, i.e. every row its own budget, which allows the frontier and Approach 3 but
    not Approach 2). Every row counts as status "ok"; the rows look like the sweep's, so every fit here
    takes them.
    """
    try:
        f = open(path, encoding="utf-8", newline="")
    except FileNotFoundError:
        raise FitError(f"{path}: no such CSV file; pass a CSV with columns params,tokens,loss") from None
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise FitError(f"{path}: lacks column(s) {', '.join(missing)}; a scaling CSV needs params,tokens,loss "
                           "(optional: budget, flops, lr, batch_size)")
        rows = []
        for lineno, record in enumerate(reader, 2):
            try:
                n, d, loss = (float(record[c]) for c in CSV_COLUMNS)
                c = float(record["flops"]) if record.get("flops") else 6.0 * n * d
                row = dict(trial=f"{path}:{lineno}", budget=float(record["budget"]) if record.get("budget") else c,
                           N=n, D=d, C=c, tokens=d, eval_loss=loss, status="ok")
                if record.get("lr"):
                    row["lr"] = float(record["lr"])
                if record.get("batch_size"):
                    row["batch_size"] = float(record["batch_size"])
            except (TypeError, ValueError):  # TypeError: a short row leaves None in a column
                raise FitError(f"{path}:{lineno}: a value is missing or not a number ({dict(record)}); "
                               "fix that row") from None
            rows.append(row)
    return rows


def usable_rows(rows: list[dict]) -> list[dict]:
    """The rows a fit may use: status "ok" (or no status) with a finite eval_loss.

    Raises FitError for an ok row that lacks budget/N/D/C/eval_loss or has a non-positive one: that is a
    broken results file, not a failed trial.
    """
    kept = []
    for i, row in enumerate(rows):
        loss = row.get("eval_loss")
        if row.get("status", "ok") != "ok" or loss is None or not math.isfinite(loss):
            continue
        name = f"row {i} ({row.get('trial', 'unnamed')})"
        missing = [k for k in REQUIRED_KEYS if row.get(k) is None]
        if missing:
            raise FitError(f"{name} lacks {', '.join(missing)}; every ok row needs {', '.join(REQUIRED_KEYS)}")
        bad = [k for k in REQUIRED_KEYS if not row[k] > 0]
        if bad:
            raise FitError(f"{name} has non-positive {', '.join(bad)}; budgets, sizes, tokens and losses must be > 0")
        kept.append(row)
    return kept


def setting(row: dict) -> tuple:
    """A row's setting, (budget, N, lr, batch_size): rows that share it differ only in their seed."""
    return row.get("budget"), row.get("N"), row.get("lr"), row.get("batch_size")


def setting_groups(rows: list[dict]) -> list[list[dict]]:
    """The usable rows grouped by setting (`setting`), in first-seen order, leaving out every setting where
    some seed diverged: such a setting is unstable, and its surviving seeds alone would be the lucky ones."""
    unstable = {setting(row) for row in rows if row.get("status") == "diverged"}
    groups = {}
    for row in usable_rows(rows):
        if setting(row) not in unstable:
            groups.setdefault(setting(row), []).append(row)
    return list(groups.values())


def seed_means(rows: list[dict]) -> list[dict]:
    """The usable rows with the seeds of each setting (budget, N, lr, batch_size) averaged into one row.

    The best setting must be chosen on mean losses: the minimum over seeds picks the luckiest seed, which
    biases every fitted loss low, and most at settings that were run with more seeds. A merged row is the
    first seed's row with the mean eval_loss and "n_seeds"; a lone row is returned as it is. Rows that
    record no seed but share a setting (a CSV's repeated runs) count as seeds of it too. A setting with
    a diverged seed is left out (`setting_groups`).
    """
    return [group[0] if len(group) == 1 else
            {**group[0], "eval_loss": float(np.mean([r["eval_loss"] for r in group])), "n_seeds": len(group)}
            for group in setting_groups(rows)]


def best_per_model(rows: list[dict]) -> list[dict]:
    """The lowest-loss setting of each model, keyed by (budget, N): the minimum over the learning-rate and
    batch-size sweep at that scale of the seed-averaged losses (`seed_means`). Sorted by budget, then N."""
    best = {}
    for row in seed_means(rows):
        key = (row["budget"], row["N"])
        if key not in best or row["eval_loss"] < best[key]["eval_loss"]:
            best[key] = row
    return [best[key] for key in sorted(best)]


def model_arrays(rows):
    """best_per_model as arrays: budget, C, N, D, loss (one entry per model) and the rows themselves."""
    models = best_per_model(rows)
    arrays = {k: np.array([m[src] for m in models], float)
              for k, src in (("budget", "budget"), ("C", "C"), ("N", "N"), ("D", "D"), ("loss", "eval_loss"))}
    arrays["rows"] = models
    return arrays
