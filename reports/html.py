"""report.html: the run record for people, with a chart of what clients saw per second."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import jinja2

from loadtests.stream import StatsStream
from reports.record import RunRecord, ScenarioResult

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
)


def render_chart(scenario: ScenarioResult, stats_dir: Path) -> str:
    """Return a base64 PNG of per-second success ratio and p99 latency, phases shaded; "" without data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not stats_dir.exists():
        return ""
    stream = StatsStream(stats_dir)
    stream.poll()
    if not stream.records:
        return ""
    start = min(record.ts for record in stream.records)
    seconds = sorted({record.ts for record in stream.records})
    ratios, latencies = [], []
    for second in seconds:
        window = stream.window(second, second + 1)
        ratios.append(window.success_ratio)
        latencies.append(window.latency_ms(0.99))

    figure, ratio_axis = plt.subplots(figsize=(10, 3.2))
    offsets = [second - start for second in seconds]
    ratio_axis.plot(offsets, ratios, color="tab:blue", label="success ratio")
    ratio_axis.set_ylim(0, 1.05)
    ratio_axis.set_xlabel("seconds since load start")
    ratio_axis.set_ylabel("success ratio")
    latency_axis = ratio_axis.twinx()
    latency_axis.plot(offsets, latencies, color="tab:orange", label="p99 latency (ms)")
    latency_axis.set_ylabel("p99 latency (ms)")
    for phase in scenario.phases:
        if phase.phase in ("chaos", "recovery"):
            color = "red" if phase.phase == "chaos" else "gold"
            ratio_axis.axvspan(phase.start - start, phase.end - start, alpha=0.12, color=color, label=phase.phase)
    handles, labels = ratio_axis.get_legend_handles_labels()
    latency_handles, latency_labels = latency_axis.get_legend_handles_labels()
    ratio_axis.legend(handles + latency_handles, labels + latency_labels, loc="lower left", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_html(record: RunRecord, folder: Path) -> Path:
    charts = {}
    for scenario in record.scenarios:
        try:
            charts[scenario.name] = render_chart(scenario, folder / scenario.name / "client-stats")
        except (OSError, ValueError) as error:
            logger.warning("Run %s: no chart for %s: %s", record.run_id, scenario.name, error)
            charts[scenario.name] = ""
    path = folder / "report.html"
    path.write_text(ENVIRONMENT.get_template("report.html.j2").render(record=record, charts=charts), encoding="utf-8")
    return path
