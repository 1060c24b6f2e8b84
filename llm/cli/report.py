"""`llm report SWEEP_DIR`: tabulate and plot a sweep's runs (llm/sweep/report.py)."""

from __future__ import annotations

from llm.cli.parsing import Parser


def main(argv: list[str]) -> int:
    p = Parser(prog="llm report", description="Tabulate and plot the runs of a sweep directory: report.md, "
                                              "report.csv, curves.png, variants.png.")
    p.add_argument("workdir", help="the sweep's directory (as given to llm sweep --workdir)")
    a = p.parse(argv)
    if a is None:
        return 0
    from llm.sweep.report import write_report

    print(write_report(a.workdir))
    return 0
