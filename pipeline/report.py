"""``report.html`` and its PNG plots, drawn from a :class:`CorpusSummary`.

The page is static and self-contained next to its PNGs (no scripts, no network), so it opens
from a bucket, a laptop or a CI artifact alike. A plot whose data is absent (no errors, no
scores from a captioner that gives none) is replaced by a sentence saying so, rather than an
empty frame.
"""

from __future__ import annotations

import html
import itertools
import os
import tempfile
from collections.abc import Callable
from typing import Literal

import matplotlib

matplotlib.use("Agg")  # headless: never look for a display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tagcap.pipeline.corpus_summary import CorpusSummary
from tagcap.schemas.layout import join_url
from tagcap.workers.storage import Storage

_COLOR = "#3b6ea5"
_DPI = 100


def _figure(width: float = 6.4, height: float = 3.6, counts_on: Literal["x", "y"] = "y") -> tuple[Figure, plt.Axes]:
    """A figure whose ``counts_on`` axis counts things: whole-number ticks, a light grid."""
    fig, ax = plt.subplots(figsize=(width, height), dpi=_DPI, layout="constrained")
    ax.grid(axis=counts_on, alpha=0.3)
    (ax.xaxis if counts_on == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _barh(counts: list[tuple[str, int]], title: str, xlabel: str, color: str, row_inches: float) -> Figure:
    """Horizontal bars, the first of ``counts`` on top."""
    rows = counts[::-1]
    fig, ax = _figure(6.4, 1.0 + row_inches * len(rows), counts_on="x")
    ax.barh([name for name, _ in rows], [n for _, n in rows], color=color)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return fig


def _errors_plot(s: CorpusSummary) -> Figure | None:
    if not s.errors_by_reason:
        return None
    return _barh(list(s.errors_by_reason.items()), "Failed samples by reason", "samples", "#b5473a", 0.32)


def _captions_per_clip_plot(s: CorpusSummary) -> Figure | None:
    if not s.captions_per_clip:
        return None
    fig, ax = _figure()
    ax.bar([str(k) for k in s.captions_per_clip], list(s.captions_per_clip.values()), color=_COLOR)
    ax.set_xlabel("captions per clip")
    ax.set_ylabel("clips")
    ax.set_title("Captions per clip")
    return fig


def _caption_length_plot(s: CorpusSummary) -> Figure | None:
    if not s.caption_words:
        return None
    fig, ax = _figure()
    ax.bar(list(s.caption_words), list(s.caption_words.values()), width=0.9, color=_COLOR)
    ax.set_xlabel("words per caption")
    ax.set_ylabel("captions")
    ax.set_title("Caption length")
    return fig


def _tags_plot(s: CorpusSummary) -> Figure | None:
    if not s.top_tags:
        return None
    fig = _barh(s.top_tags, f"Top {len(s.top_tags)} tags", "clips", _COLOR, 0.26)
    fig.axes[0].tick_params(axis="y", labelsize=8)
    return fig


def _scores_plot(s: CorpusSummary) -> Figure | None:
    present = {name: score for name, score in s.scores.items() if score.count}
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(6.4, 3.4), dpi=_DPI, layout="constrained", squeeze=False)
    for ax, (name, score) in zip(axes[0], present.items(), strict=True):
        edges = score.bin_edges
        widths = [b - a for a, b in itertools.pairwise(edges)]
        ax.bar(edges[:-1], score.bin_counts, width=widths, align="edge", color=_COLOR)
        ax.axvline(score.median or 0.0, color="#222", linestyle="--", linewidth=1, label="median")
        ax.set_xlabel(name)
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)
    fig.suptitle("Score distributions")
    return fig


def _throughput_plot(s: CorpusSummary) -> Figure | None:
    if not s.throughput:
        return None
    fig, ax = _figure()
    span = s.throughput[-1].seconds
    unit, scale = ("minutes", 60.0) if span >= 180 else ("seconds", 1.0)
    # The curve starts at the origin: the first shard's own work is part of the run.
    times = [0.0] + [p.seconds / scale for p in s.throughput]
    ax.plot(times, [0] + [p.clips_total for p in s.throughput], color=_COLOR, marker=".", linewidth=1.5)
    ax.set_xlabel(f"{unit} since the first shard started")
    ax.set_ylabel("clips done")
    ax.set_title("Throughput over time" + (f" ({s.clips_per_second:,.1f} clips/s)" if s.clips_per_second else ""))
    return fig


# (file name, section title, plot, what to say where there is nothing to plot)
_PLOTS: list[tuple[str, str, Callable[[CorpusSummary], Figure | None], str]] = [
    ("errors.png", "Errors by reason", _errors_plot, "No sample failed."),
    ("captions_per_clip.png", "Captions per clip", _captions_per_clip_plot, "No sample was written."),
    ("caption_length.png", "Caption length", _caption_length_plot, "No caption was written."),
    ("top_tags.png", "Top tags", _tags_plot, "No tags were written."),
    ("scores.png", "Scores", _scores_plot, "This captioner and filter record no scores."),
    (
        "throughput.png",
        "Throughput over time",
        _throughput_plot,
        "No shard has a commit time (written by an older tagcap).",
    ),
]


def _fmt(value: object) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _facts(s: CorpusSummary) -> list[tuple[str, object]]:
    coverage = f"{s.tags_seen:,} of {s.label_classes:,} ({s.tag_coverage:.1%})" if s.tag_coverage is not None else None
    return [
        ("captioner", s.captioner),
        ("status", s.status),
        ("shards committed", f"{s.shards_committed:,} of {_fmt(s.shards_total)}"),
        ("samples in", s.samples_in),
        ("samples written", s.samples_written),
        ("samples failed", s.samples_failed),
        ("captions", s.captions_total),
        ("distinct captions", s.distinct_captions),
        ("vocabulary (distinct words)", s.vocabulary_size),
        ("distinct tags", s.tags_seen),
        ("tag coverage of the label map", coverage),
        ("clips/s (first to last commit)", s.clips_per_second),
        *_dedupe_facts(s.dedupe),
        *_caption_quality_facts(s.caption_quality),
    ]


def _dedupe_facts(d: dict | None) -> list[tuple[str, object]]:
    if not d:
        return [("duplicates", "not searched (tagcap dedupe)")]
    return [
        ("exact duplicates (groups / clips dropped)", f"{d['exact_groups']:,} / {d['exact_dropped']:,}"),
        ("near duplicates (groups / clips dropped)", f"{d['near_groups']:,} / {d['near_dropped']:,}"),
        ("duplicates of this corpus on the key list", f"{d['dropped_here']:,} ({d['keys_url']})"),
    ]


def _caption_quality_facts(q: dict | None) -> list[tuple[str, object]]:
    if not q:
        return [("caption quality", "not scored (tagcap eval captions)")]
    facts: list[tuple[str, object]] = [("samples with human references", f"{q['matched']:,} of {q['samples']:,}")]
    for r in q["results"]:
        meteor = f", METEOR {r['meteor']:.3f}" if r.get("meteor") is not None else ""
        facts.append(
            (
                f"{r['captioner']} ({r['stage']})",
                f"BLEU-4 {r['bleu_4']:.3f}, ROUGE-L {r['rouge_l']:.3f}, CIDEr-D {r['cider_d']:.3f}{meteor}",
            )
        )
    return facts


def _html(s: CorpusSummary, sections: list[tuple[str, str, str | None, str]]) -> str:
    rows = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in _facts(s))
    body = []
    for name, title, image, note in sections:
        body.append(f'<section id="{html.escape(name.removesuffix(".png"))}"><h2>{html.escape(title)}</h2>')
        if image:
            body.append(f'<img src="{html.escape(image)}" alt="{html.escape(title)}">')
        else:
            body.append(f'<p class="none">{html.escape(note)}</p>')
        body.append("</section>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>tagcap corpus report: {html.escape(s.output)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; padding: 0.25em 1em 0.25em 0; border-bottom: 1px solid #ddd; }}
img {{ max-width: 100%; }}
.none {{ color: #666; font-style: italic; }}
</style></head>
<body>
<h1>tagcap corpus report</h1>
<p><code>{html.escape(s.output)}</code></p>
<table>
{rows}
</table>
{chr(10).join(body)}
</body></html>
"""


def write_report(summary: CorpusSummary, report_url: str, storage: Storage | None = None) -> str:
    """Draw the plots and the page into ``report_url`` (a folder URL); returns the page's URL."""
    storage = storage or Storage()
    storage.makedirs(report_url)
    sections: list[tuple[str, str, str | None, str]] = []
    with tempfile.TemporaryDirectory(prefix="tagcap-report-") as tmp:
        for name, title, plot, note in _PLOTS:
            fig = plot(summary)
            if fig is None:
                sections.append((name, title, None, note))
                continue
            path = os.path.join(tmp, name)
            fig.savefig(path, format="png")
            plt.close(fig)
            storage.publish_file(path, join_url(report_url, name))
            sections.append((name, title, name, note))
    page = join_url(report_url, "report.html")
    storage.publish_bytes(_html(summary, sections).encode(), page)
    return page
