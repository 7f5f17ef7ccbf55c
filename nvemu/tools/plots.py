"""Figures of ``nvemu bench`` (matplotlib, the ``nvemu[plot]`` extra): every cell of the grid is
drawn, the scale is readable and each figure states what was run.

* ``overhead_by_strategy``: one panel per combination of the platform dimensions that vary in the
  grid (fan-out, domain, controllers, WPQ depth, flush hints), each panel grouped bars of every
  workload x strategy; a log scale (overheads span 1x to ~100x) with the value written on each
  bar, so a bar near 1x (``writable``) stays visible.
* ``overhead_vs_vfha_rate``: overhead against how often the guest writes its vFHA.
* ``sensitivity``: emulated ns per op against a swept timing parameter, one panel per workload,
  shaded bands where the strategies' ranking flips (``sensitivity-NAME`` when several are swept).

Every figure carries a footer with the ops per cell, seed, VMs and the full timing model.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

from .._files import atomic_write
from ..machine.config import TIMING_SOURCES
from .microbench import ranking

FORMATS = ("png", "svg", "pdf")
FACET_KEYS = ("fanout", "domain", "controllers", "wpq_depth", "hints", "vms")
_LABELS = {"fanout": "fan-out", "domain": "domain", "controllers": "iMCs", "wpq_depth": "WPQ depth",
           "hints": "flush hints", "vms": "VMs"}


def _pyplot() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def describe_run(meta: dict[str, Any]) -> str:
    """The footer: what every cell shares (ops, seed, VMs, platform shape, timing model)."""
    costs = ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                      for k, v in meta.get("timing", {}).items())
    parts = [f"{meta.get('ops', 0):,} guest ops per cell", f"seed {meta.get('seed', 0)}",
             f"{meta.get('vms', 1)} VM(s), interleave {meta.get('interleave', 'all')}"]
    if meta.get("platform"):
        parts.append(f"platform {meta['platform']}")
    native = ("native = the same trace without virtualization (no exits, no second-level page walks; the "
              "guest writes the physical flush hints itself).")
    return "; ".join(parts) + f".  Timing model: {costs}.  " + native


def _facets(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> tuple[list[str], list[tuple]]:
    varied = [k for k in keys if len({r.get(k) for r in rows}) > 1]
    facets = list(dict.fromkeys(tuple(r.get(k) for k in varied) for r in rows))
    return varied, facets


def _facet_title(varied: Sequence[str], values: tuple) -> str:
    return ", ".join(f"{_LABELS.get(k, k)} {v}" for k, v in zip(varied, values)) or "every cell"


def _grid(plt: Any, n: int, width: float, height: float) -> tuple[Any, list[Any]]:
    """``n`` panels of ``width`` x ``height`` inches: one column when panels are wide, else 2 or 3."""
    ncols = 1 if n == 1 or width > 8 else 2 if n <= 4 else 3
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows + 0.9), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(plt: Any, fig: Any, out: Path, name: str, title: str, footer: str, fmt: str, dpi: int,
          legend: tuple[list[Any], list[str]] | None = None) -> Path:
    """Title, ``legend`` (one row under the title) and footer laid out clear of the panels and of
    each other, wrapped to the figure's width; written whole."""
    width, height = fig.get_size_inches()
    title = "\n".join(textwrap.wrap(title, int(width * 11)))
    footer = "\n".join(textwrap.wrap(footer, int(width * 16)))
    # Distances in inches over the figure's height: the title hangs from 0.08 in below the top edge,
    # 0.24 in per 12 pt line; the legend row starts 0.06 in under the title's last line.
    fig.suptitle(title, fontsize=12, y=1 - 0.08 / height, va="top")
    fig.text(0.01, 0.005, footer, fontsize=7, va="bottom", family="monospace")
    bottom = (footer.count("\n") + 1) * 0.13 / height + 0.01        # 7 pt lines, in figure fractions
    top = 1 - (0.08 + (title.count("\n") + 1) * 0.24) / height
    if legend is not None:
        top -= 0.06 / height
        fig.legend(*legend, loc="upper center", bbox_to_anchor=(0.5, top), fontsize=8, ncol=len(legend[1]),
                   frameon=False, borderaxespad=0)
        top -= 0.3 / height
    fig.tight_layout(rect=(0, bottom, 1, top))
    path = out / f"{name}.{fmt}"
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=fmt, dpi=dpi)
    plt.close(fig)
    return path


def _log_axis(ax: Any, values: Sequence[float]) -> float:
    """A log y axis with plain tick labels (1x, 2x, 5x ...); returns the bars' base."""
    from matplotlib.ticker import FuncFormatter, LogLocator
    finite = [v for v in values if v and math.isfinite(v) and v > 0]
    lo = min(finite + [1.0])
    hi = max(finite + [1.0])
    base = 10 ** math.floor(math.log10(lo * 0.8)) if lo < 0.8 else 0.8
    ax.set_yscale("log")
    ax.set_ylim(base, hi * 2.2)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}x"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))
    ax.grid(axis="y", which="major", alpha=0.3)
    return base


def overhead_figure(rows: Sequence[dict[str, Any]], meta: dict[str, Any], out: Path, fmt: str = "png",
                    dpi: int = 120) -> Path | None:
    """Grouped bars of overhead against native, one panel per platform combination of the grid."""
    cells = [r for r in rows if r["strategy"] != "native" and not r.get("error")]
    if not cells:
        return None
    plt = _pyplot()
    varied, facets = _facets(cells, FACET_KEYS)
    workloads = list(dict.fromkeys(r["workload"] for r in cells))
    strategies = list(dict.fromkeys(r["strategy"] for r in cells))
    fig, axes = _grid(plt, len(facets), min(11.0, max(6.5, 0.4 * len(workloads) * len(strategies) + 2)), 4.6)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / len(strategies)
    for ax, facet in zip(axes, facets):
        mine = [r for r in cells if tuple(r.get(k) for k in varied) == facet]
        found: dict[tuple[str, str], float] = {}
        for r in mine:
            key = (r["workload"], r["strategy"])
            if key in found:
                raise ValueError(f"two cells for {key} in panel {_facet_title(varied, facet)}: the grid varies "
                                 f"a dimension the figure does not facet on")
            found[key] = r["overhead_vs_native"]
        base = _log_axis(ax, list(found.values()))
        for k, s in enumerate(strategies):
            xs = [i + k * width for i in range(len(workloads))]
            ys = [found.get((w, s), math.nan) for w in workloads]
            ax.bar(xs, [y - base if math.isfinite(y) else 0 for y in ys], width, bottom=base, label=s,
                   color=colors[k % len(colors)])
            for x, y in zip(xs, ys):
                if math.isfinite(y):
                    ax.text(x, y * 1.06, f"{y:.3g}", ha="center", va="bottom", fontsize=6.5, rotation=90)
        ax.axhline(1.0, color="black", linewidth=0.9, linestyle="--", label="native (1x)")
        ax.set_xticks([i + width * (len(strategies) - 1) / 2 for i in range(len(workloads))], workloads,
                      rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("emulated ns per op / native (log scale)", fontsize=8)
        ax.set_title(_facet_title(varied, facet), fontsize=9)
    axes[0].legend(fontsize=7, ncol=2, loc="upper left")
    what = f" by {', '.join(_LABELS[k] for k in varied)}" if varied else ""
    fixed = ", ".join(f"{_LABELS[k]} {cells[0].get(k)}" for k in FACET_KEYS if k not in varied and k in cells[0])
    return _save(plt, fig, out, "overhead_by_strategy", f"Overhead of virtualized WPQ flushing per strategy{what} "
                 f"({len(cells)} cells; every panel: {fixed})", describe_run(meta), fmt, dpi)


def rate_figure(rate_rows: Sequence[dict[str, Any]], meta: dict[str, Any], workload: str, out: Path,
                fmt: str = "png", dpi: int = 120) -> Path | None:
    """Overhead against vFHA writes per 1,000 ops (the workload deep-flushing every N-th unit)."""
    rate = [r for r in rate_rows if r["strategy"] != "native" and not r.get("error")]
    if not rate:
        return None
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter
    fig, (ax,) = _grid(plt, 1, 8, 4.8)
    _log_axis(ax, [r["overhead_vs_native"] for r in rate])
    for s in dict.fromkeys(r["strategy"] for r in rate):
        mine = sorted((r for r in rate if r["strategy"] == s), key=lambda r: r["vfha_writes"] / r["ops"])
        ax.plot([1000 * r["vfha_writes"] / r["ops"] for r in mine], [r["overhead_vs_native"] for r in mine],
                marker="o", label=s)
    ax.axhline(1.0, color="black", linewidth=0.9, linestyle="--", label="native (1x)")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_xlabel(f"vFHA writes per 1,000 guest ops, log scale ({workload}, deep flush after every N-th put)",
                  fontsize=9)
    ax.set_ylabel("emulated ns per op / native (log scale)", fontsize=9)
    ax.legend(fontsize=8)
    first = rate[0]
    where = ", ".join(f"{_LABELS[k]} {first[k]}" for k in FACET_KEYS if k in first)
    return _save(plt, fig, out, "overhead_vs_vfha_rate", f"Overhead as the vFHA write rate grows ({where})",
                 describe_run({**meta, "ops": first["ops"]}), fmt, dpi)


def _swept(row: dict[str, Any], name: str) -> Any:
    """The swept parameter's value in a result row (a timing parameter, or the WPQ depth)."""
    return row["wpq_depth"] if name == "wpq_depth" else row["timing"][name]


_STYLES = {"write-protect": ("o", "-"), "mmio": ("s", "--"), "hypercall": ("^", "-."), "writable": ("D", ":"),
           "auto": ("v", "-"), "drop": ("x", ":")}
_SHORT = {"write-protect": "WP", "mmio": "MMIO", "hypercall": "HC", "writable": "W"}


def _unit(name: str) -> str:
    """The unit of a swept parameter, for its axis: ``write_protect_cycles`` -> ``CPU cycles``."""
    units = {"wpq_depth": "WPQ lines", "fill_buffers": "line buffers per vCPU"}
    suffixes = {"_cycles": "CPU cycles", "_ns": "ns", "_gbps": "GB/s", "_ghz": "GHz"}
    return units.get(name) or next((u for s, u in suffixes.items() if name.endswith(s)), "value")


def _short(order: str) -> str:
    """A ranking with the strategies' short names: ``"W < MMIO < HC = WP"``."""
    for name, short in _SHORT.items():
        order = order.replace(name, short)
    return order


def sensitivity_figure(rows: Sequence[dict[str, Any]], name: str, meta: dict[str, Any], out: Path,
                       fmt: str = "png", dpi: int = 120, figure: str = "sensitivity") -> Path | None:
    """Emulated ns per op against the swept timing parameter (or ``wpq_depth``) ``name``: a panel per
    workload (and varied platform dimension), a line per strategy (each with its own marker and
    dash, so equal times stay visible), the default value dashed, and a shaded band between the
    two swept values where the strategies' ranking flips, labelled with the new ranking. The y
    axis spans the panel's times (not from 0), so that close strategies stay apart."""
    cells = [r for r in rows if r["strategy"] != "native" and not r.get("error")]
    if not cells:
        return None
    plt = _pyplot()
    varied, facets = _facets(cells, ("workload", *(k for k in FACET_KEYS if k != name)))   # the swept axis: x
    fig, axes = _grid(plt, len(facets), 6.5, 4.4)
    default = meta.get("timing", {}).get(name) if name != "wpq_depth" else meta.get("wpq_depth", 64)
    flips = 0
    for ax, facet in zip(axes, facets):
        mine = [r for r in cells if tuple(r.get(k) for k in varied) == facet]
        values = sorted({_swept(r, name) for r in mine})
        orders = [ranking([r for r in mine if _swept(r, name) == v]) for v in values]
        for (a, b), (before, after) in zip(zip(values, values[1:]), zip(orders, orders[1:])):
            if before != after:
                flips += 1
                ax.axvspan(a, b, facecolor="tab:orange", alpha=0.12, edgecolor="saddlebrown", linewidth=0.6)
                middle = math.sqrt(a * b) if name == "wpq_depth" else (a + b) / 2
                ax.text(middle, 0.97, "flips to " + _short(after), transform=ax.get_xaxis_transform(),
                        fontsize=6.5, rotation=90, ha="center", va="top", color="saddlebrown")
        if default is not None and values[0] <= default <= values[-1]:
            ax.axvline(default, color="grey", linestyle="--", linewidth=0.9)
            ax.text(default, 0.02, f"default {default:g}", transform=ax.get_xaxis_transform(), fontsize=7,
                    color="dimgrey", ha="left", va="bottom",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
        for s in dict.fromkeys(r["strategy"] for r in mine):
            pts = sorted((_swept(r, name), r["ns_per_op"]) for r in mine if r["strategy"] == s)
            marker, dash = _STYLES.get(s, ("o", "-"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, linestyle=dash, markersize=4,
                    label=f"{s} ({_SHORT.get(s, s)})", markerfacecolor="none")
        if name == "wpq_depth":
            ax.set_xscale("log", base=2)
            ax.set_xticks(values, [f"{v:g}" for v in values])
        free = name == "wpq_depth" or TIMING_SOURCES.get(name, "").startswith("free")
        ax.set_xlabel(f"{name} ({_unit(name)}, {'free parameter' if free else 'swept'})", fontsize=8)
        ax.set_ylabel("emulated ns per guest op", fontsize=8)
        times = [r["ns_per_op"] for r in mine]
        lo, hi = min(times), max(times)
        span = hi - lo or max(hi * 0.05, 1e-9)
        ax.set_ylim(lo - 0.15 * span, hi + 1.1 * span)         # the top half keeps the flip labels clear
        title = _facet_title(varied, facet) if varied else str(mine[0]["workload"])
        if len(set(orders)) == 1 and " < " not in orders[0]:
            title += " (all strategies equal: lines overlap)"
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    others = {k: v for k, v in meta.get("timing", {}).items() if k != name}
    swept = sorted({_swept(r, name) for r in cells})
    what = (f"ranking flips in {flips} place(s), shaded; y axes do not start at 0" if flips
            else "the ranking never flips in this range; y axes do not start at 0")
    return _save(plt, fig, out, figure, f"Sensitivity to {name}: {swept[0]:g}..{swept[-1]:g} ({what})",
                 describe_run({**meta, "timing": {name: "swept", **others}}), fmt, dpi,
                 legend=axes[0].get_legend_handles_labels())


__all__ = ["FORMATS", "describe_run", "overhead_figure", "rate_figure", "sensitivity_figure"]
