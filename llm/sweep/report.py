"""`llm report runs/SWEEP`: one table of a sweep's runs, and plots.

    report.md / report.csv   name, the config keys that differ between runs, final / best val loss, final / best
                             val accuracy (synthetic tasks: `val_accuracy` in metrics.jsonl; the columns are left
                             out when no run logs it), final train loss, tokens/s (median of the logged values),
                             parameters, wall time, status
    curves.png               val loss against step, one line per run
    variants.png             final val loss (and val accuracy, when logged) per variant (a run's name less its seed
                             suffix, or its overrides less `seed`): mean over seeds, std bars
    state.png                when runs log accuracy and differ in decoding state (`state`: numbers a sequence keeps
                             to decode, llm.model.mixers.decode_state_size): accuracy against state, one line per
                             sequence mixer (Zoology's recall-versus-state figure)
    width.png                the same against `model.d_model`, when runs differ in it
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from llm.config.experiments import flatten
from llm.errors import ConfigError, DataError
from llm.files import write_text
from llm.model.mixer_table import DEFAULT_MIXER, MIXER_TABLE
from llm.runs import CONFIG_FILE, METRICS_FILE, open_run, read_metrics
from llm.sweep.runner import read_records
from llm.sweep.spec import REPORT_FILES

REPORT_MD, REPORT_CSV, CURVES_PNG, VARIANTS_PNG, STATE_PNG, WIDTH_PNG = REPORT_FILES

SEED_KEYS = ("seed",)
COLUMNS_AFTER = ("final_val_loss", "best_val_loss", "final_val_accuracy", "best_val_accuracy", "final_train_loss",
                 "tokens_per_s", "params", "state", "wall_time_s", "status")


def _model_counts(run_dir: Path) -> tuple[int | None, int | None]:
    """(closed-form parameter count, decoding state size) of the run's model, as the run resolves it; Nones for a
    run that cannot be read (never started, damaged)."""
    from llm.model.mixers import decode_state_size
    from llm.model.params import param_count_formula

    try:
        cfg = open_run(run_dir).run.model
    except (ConfigError, DataError):
        return None, None
    return int(param_count_formula(cfg)["total"]), decode_state_size(cfg)


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One dict per run: name, overrides, flat config, metrics rows, and the table's values."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir}: no such directory; give the --workdir of an `llm sweep`")
    records = read_records(sweep_dir)
    names = list(records)
    names += sorted(p.name for p in sweep_dir.iterdir() if (p / CONFIG_FILE).exists() and p.name not in records)
    if not names:
        raise ConfigError(f"{sweep_dir} holds no runs (no sweep.json and no run directories with a config.json)")
    runs = []
    for name in names:
        run_dir = sweep_dir / name
        record = records.get(name, {})
        config = {}
        if (run_dir / CONFIG_FILE).exists():
            try:
                config = json.loads((run_dir / CONFIG_FILE).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                config = {}
        rows = read_metrics(run_dir / METRICS_FILE)
        vals = [(r["step"], r["val_loss"]) for r in rows if _finite(r.get("val_loss"))]
        accs = [r["val_accuracy"] for r in rows if _finite(r.get("val_accuracy"))]
        trains = [r["train_loss"] for r in rows if _finite(r.get("train_loss"))]
        losses = [r["loss"] for r in rows if _finite(r.get("loss"))]
        speeds = [r["tokens_per_s"] for r in rows if _finite(r.get("tokens_per_s"))]
        params, state = _model_counts(run_dir) if config else (None, None)
        status = record.get("status") or ("done" if vals else "unknown")
        if status == "skipped":
            status = "done"  # finished in an earlier invocation
        runs.append({
            "name": name,
            "overrides": record.get("overrides", {}),
            "config": flatten(config),
            "val_curve": vals,
            "final_val_loss": vals[-1][1] if vals else None,
            "best_val_loss": min(v for _, v in vals) if vals else None,
            "final_val_accuracy": accs[-1] if accs else None,
            "best_val_accuracy": max(accs) if accs else None,
            "final_train_loss": trains[-1] if trains else (losses[-1] if losses else None),
            "tokens_per_s": statistics.median(speeds) if speeds else None,
            "params": params,
            "state": state,
            "wall_time_s": record.get("wall_time"),
            "status": status,
        })
    return runs


def differing_keys(runs: list[dict]) -> list[str]:
    """The flat config keys whose values are not the same in every run that has a config."""
    configs = [r["config"] for r in runs if r["config"]]
    keys = sorted(set().union(*configs)) if configs else []
    differ = {k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1}
    swept = {k for r in runs for k in r["overrides"]}  # the sweep's axes, also when a run never wrote its config
    return sorted(differ | swept)


def _value(run: dict, key: str) -> Any:
    return run["config"][key] if key in run["config"] else run["overrides"].get(key)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table(runs: list[dict]) -> tuple[list[str], list[list[str]]]:
    keys = differing_keys(runs)
    header = ["name", *keys, *COLUMNS_AFTER]
    for column in ("params", "state", "final_val_accuracy", "best_val_accuracy"):
        if all(r[column] is None for r in runs):
            header.remove(column)
    rows = []
    for r in runs:
        row = [r["name"], *(_cell(_value(r, k)) for k in keys)]
        row += [f"{r[c]:.1f}" if c == "wall_time_s" and r[c] is not None else _cell(r[c])
                for c in header[1 + len(keys):]]
        rows.append(row)
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def variants(runs: list[dict], metric: str = "final_val_loss") -> list[tuple[str, float, float, int]]:
    """(variant, mean, std, n) of `metric` over seeds. A variant is a run's name less a seed suffix ('-s0',
    '-seed1', with that seed in its overrides), else its overrides less the seed (or, without sweep.json, its
    differing config keys less the seed)."""
    keys = [k for k in differing_keys(runs) if k not in SEED_KEYS]
    groups: dict[str, list[float]] = {}
    for r in runs:
        if r[metric] is None:
            continue
        seed = next((r["overrides"][k] for k in SEED_KEYS if k in r["overrides"]), None)
        stripped = re.sub(rf"[-_.]s(?:eed)?-?{seed}$", "", r["name"]) if seed is not None else r["name"]
        if stripped != r["name"]:
            label = stripped
        else:
            if r["overrides"]:
                items = [(k, v) for k, v in r["overrides"].items() if k not in SEED_KEYS]
            else:
                items = [(k, _value(r, k)) for k in keys]
            label = ",".join(f"{k.split('.')[-1]}={v}" for k, v in items) or "base"
        groups.setdefault(label, []).append(r[metric])
    return [(label, *spread(v)) for label, v in groups.items()]


def spread(values: list[float]) -> tuple[float, float, int]:
    """(mean, standard deviation (0 for one value), count) of a group of runs' values."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def plot(runs: list[dict], sweep_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        if r["val_curve"]:
            steps, losses = zip(*r["val_curve"], strict=True)
            ax.plot(steps, losses, marker="o", markersize=3, label=r["name"])
    ax.set_xlabel("step")
    ax.set_ylabel("val loss")
    ax.set_title("validation loss")
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(sweep_dir / CURVES_PNG, dpi=110)
    plt.close(fig)
    out.append(sweep_dir / CURVES_PNG)

    # One row per variant (labels on the y axis stay readable however many there are); a second panel with
    # the val accuracy when runs log it (synthetic tasks).
    panels = [(m, title) for m, title in (("final_val_loss", "final val loss"),
                                          ("final_val_accuracy", "final val accuracy"))
              if any(r[m] is not None for r in runs)] or [("final_val_loss", "final val loss")]
    groups = [variants(runs, m) for m, _ in panels]
    n_rows = max([len(g) for g in groups] + [1])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + 3, 0.32 * n_rows + 1.6), squeeze=False,
                             sharey=False)
    for ax, (_, title), group in zip(axes[0], panels, groups, strict=True):
        if group:
            labels, means, stds, ns = zip(*group, strict=True)
            y = list(range(len(labels)))[::-1]
            # Points, not bars: the axis does not start at 0, and a bar's length would mislead.
            ax.errorbar(means, y, xerr=stds, fmt="o", capsize=3, color="tab:blue")
            ax.set_yticks(y, [f"{lab} (n={n})" for lab, n in zip(labels, ns, strict=True)], fontsize=7)
            ax.set_ylim(-0.7, len(labels) - 0.3)
            ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel(f"{title} (mean ± std over seeds)")
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(sweep_dir / VARIANTS_PNG, dpi=110)
    plt.close(fig)
    out.append(sweep_dir / VARIANTS_PNG)
    for figure, x, xlabel, title in RECALL_FIGURES:
        points = recall_points(runs, x)
        if points:
            out.append(_plot_recall(points, sweep_dir / figure, xlabel, title, plt))
    return out


def mixer_label(run: dict) -> str:
    """A run's sequence mixer: `model.mixer` (a hybrid: its pattern), softmax attention with a window named so."""
    c = run["config"]
    mixer = c.get("model.mixer_pattern") or c.get("model.mixer", DEFAULT_MIXER)
    softmax = mixer in MIXER_TABLE and MIXER_TABLE[mixer].softmax
    return f"window{c['model.window']}" if softmax and c.get("model.window") else mixer


def recall_points(runs: list[dict], x) -> dict[str, list[tuple[float, float, float, int]]]:
    """{mixer: [(x, mean accuracy, std, seeds)] by x}, `x(run)` a number (None: left out); empty unless accuracy
    is logged and x differs between runs."""
    done = [(r, x(r)) for r in runs if r["final_val_accuracy"] is not None]
    done = [(r, v) for r, v in done if v is not None]
    if len({v for _, v in done}) < 2:
        return {}
    groups: dict[tuple[str, float], list[float]] = {}
    for r, v in done:
        groups.setdefault((mixer_label(r), v), []).append(r["final_val_accuracy"])
    points: dict[str, list] = {}
    for (label, v), accs in sorted(groups.items(), key=lambda kv: kv[0][1]):
        points.setdefault(label, []).append((v, *spread(accs)))
    return points


# (file, x of a run, x label, title): the recall figures `plot` draws when their x varies.
RECALL_FIGURES = (
    (STATE_PNG, lambda r: r["state"], "decoding state (numbers per sequence, all layers)", "recall against state"),
    (WIDTH_PNG, lambda r: r["config"].get("model.d_model"), "model width (d_model)", "recall against width"),
)


def _plot_recall(points: dict[str, list], path: Path, xlabel: str, title: str, plt) -> Path:
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in points.items():
        xs, means, stds, _ = zip(*pts, strict=True)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # log-axis minor labels overlap
    ax.set_xlabel(xlabel)
    ax.set_ylabel("final val accuracy (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(sweep_dir: str | Path) -> str:
    """Write report.md, report.csv, curves.png, variants.png (and the recall figures) into the sweep directory;
    returns the markdown."""
    sweep_dir = Path(sweep_dir)
    runs = collect(sweep_dir)
    header, rows = table(runs)
    text = markdown(header, rows)
    written = plot(runs, sweep_dir)
    figures = f"![val loss]({CURVES_PNG})\n\n![variants]({VARIANTS_PNG})\n"
    figures += "".join(f"\n![{title}]({figure})\n" for figure, _, _, title in RECALL_FIGURES
                       if sweep_dir / figure in written)
    write_text(sweep_dir / REPORT_MD, f"# Sweep {sweep_dir.name}\n\n{text}\n{figures}")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(sweep_dir / REPORT_CSV, buf.getvalue())
    return text
