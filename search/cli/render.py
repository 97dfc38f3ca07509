"""How each command's result reads as a table (rendering apart from the work)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def fmt(x: float | None, missing: str = "undefined") -> str:
    return missing if x is None else f"{x:.2f}"


def metrics_text(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {fmt(v)}" for k, v in metrics.items())


def glue_rows(folder: str, counts: dict[str, dict[str, int]]) -> Table:
    table = Table(title=f"GLUE rows in {folder}")
    order = ["train", "validation", "validation_matched", "validation_mismatched", "test", "test_matched"]
    splits = sorted(
        {s for c in counts.values() for s in c}, key=lambda s: order.index(s) if s in order else 99
    )
    table.add_column("task")
    for s in splits:
        table.add_column(s, justify="right")
    for task, c in counts.items():
        table.add_row(task, *[f"{c[s]:,}" if s in c else "-" for s in splits])
    return table


def teachers(name: str, results: dict[str, Any], average: float) -> Table:
    table = Table(title=f"teacher {name} (dev)")
    for col in ("task", "metrics", "cached", "path"):
        table.add_column(col)
    for task, r in results.items():
        table.add_row(task, metrics_text(r["metrics"]), "yes" if r["cached"] else "no", r["path"])
    table.caption = f"GLUE average over these tasks: {fmt(average)}"
    return table


def metrics(title: str, values: dict[str, float]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in values.items():
        table.add_row(k, fmt(v))
    return table


def distilled(title: str, tasks: dict[str, dict[str, Any]], baseline: bool) -> Table:
    table = Table(title=title)
    for col in ("task", "teacher", "distilled", *(["fine-tuned only"] if baseline else [])):
        table.add_column(col)
    for name, r in tasks.items():
        cells = [metrics_text(r["teacher"]), metrics_text(r["distilled"])]
        table.add_row(name, *cells, *([metrics_text(r["fine-tuned"])] if baseline else []))
    return table


def mapping_search(results: dict[str, Any]) -> Table:
    table = Table(
        title=f"layer-mapping search ({results['mode']}, {results['proxy_mode']} proxy; "
        f"{results['space']['size']} valid mappings), proxy fitness"
    )
    for col in ("strategy", "mapping", "fitness", "evaluations"):
        table.add_column(col)
    for name, label in (("exhaustive", "exhaustive best"), ("ga", "GA best"), ("random", "random best")):
        found = results.get(name)
        if found and found["best"]:
            best = found["best"]
            table.add_row(label, best["mapping"], fmt(best["fitness"]), str(found["evaluations"]))
    for name, value in results["baselines"].items():
        table.add_row(name, "", fmt(value, "failed"), "1")
    signal = results.get("signal")
    if signal:
        table.caption = (
            f"{len(signal['uninformative'])} of {signal['evaluations']} evaluations at chance level "
            f"({100 * signal['fraction']:.0f}%; chance: "
            + ", ".join(f"{t} ≤ {c['threshold']:.2f}" for t, c in signal["chance"].items())
            + ")"
        )
    return table


def joint_search(results: dict[str, Any]) -> Table:
    volumes = results["hypervolume"]["per_generation"]
    signal, lat = results["signal"], results["latency"]
    table = Table(
        title=f"joint search ({results['mode']}): {results['evaluations']} students evaluated, a front of "
        f"{len(results['front'])} spanning {fmt(results['front_params_span'] or 0)}x in parameters; "
        f"hypervolume {fmt(volumes[-1]['hypervolume'] if volumes else None, 'none')}; "
        f"latency MAPE {fmt(lat['mape_percent'], 'n/a')}%",
        caption=f"{len(signal['uninformative'])} of {signal['evaluations']} evaluations at chance level; "
        f"the machine ran {fmt(lat.get('drift'), 'n/a')}x the table's time when the front was timed "
        f"(MAPE corrected by it: {fmt(lat.get('mape_drift_corrected_percent'), 'n/a')}%)",
    )
    for col in ("student", "proxy", "params (M)", "predicted ms", "measured ms"):
        table.add_column(col)
    for r in results["front"]:
        table.add_row(
            r["student"],
            fmt(r["proxy"]),
            f"{r['params'] / 1e6:.2f}",
            fmt(r["predicted_ms"]),
            fmt(r["measured_ms"]),
        )
    return table


def supernet_search(results: dict[str, Any]) -> Table:
    lat, cost = results["latency"], results["cost"]
    table = Table(
        title=f"supernet front: {len(results['front'])} students spanning "
        f"{fmt(results['front_params_span'] or 0)}x in parameters; latency MAPE {fmt(lat['mape_percent'])}%; "
        f"inherited scoring {100 * (cost['score_share_of_training'] or 0):.3f}% of supernet training"
    )
    for col in ("student", "path", "params (M)", "predicted ms", "measured ms", "proxy loss", "front"):
        table.add_column(col)
    for r in results["students"]:
        table.add_row(
            r.get("name", ""),
            r["path"],
            f"{r['params'] / 1e6:.2f}",
            fmt(r["predicted_ms"]),
            fmt(r["measured_ms"]),
            f"{r['inherited_loss']:.4f}",
            "yes" if r["front"] else "",
        )
    return table


def mapping_fidelity(results: dict[str, Any]) -> Table:
    name = "student" if results.get("search") == "joint" else "mapping"
    rungs = [r for r in results.get("rungs", []) if len(results.get("rungs", [])) > 1]
    per_rung = "; ".join(f"rung {r['rung']} tau {fmt(r['kendall_tau'], 'undefined')}" for r in rungs)
    table = Table(
        title=f"proxy fidelity: Kendall tau {fmt(results['kendall_tau'], 'undefined (ties)')}, "
        f"Spearman rho {fmt(results['spearman_rho'])} ({len(results['candidates'])} {name}s)"
        + (f"; {per_rung}" if per_rung else "")
    )
    for col in (name, "chosen", "proxy", "full"):
        table.add_column(col)
    for c in results["candidates"]:
        table.add_row(c[name], c["chosen"], fmt(c["proxy"]), fmt(c["full"], "failed"))
    return table


def supernet_fidelity(results: dict[str, Any]) -> Table:
    def agreement(a: dict[str, float | None]) -> str:
        return f"tau {fmt(a['kendall_tau'])}, rho {fmt(a['spearman_rho'])}"

    table = Table(
        title=f"inherited weights against standalone distillation ({len(results['students'])} students): "
        f"task score {agreement(results['task_score'])}; held-out loss {agreement(results['held_out_loss'])}"
    )
    for col in ("path", "chosen", "inherited loss", "standalone loss", "task score"):
        table.add_column(col)
    for r in results["students"]:
        table.add_row(
            r["path"],
            r["chosen"],
            f"{-r['inherited']:.4f}",
            f"{r['held_out_loss']:.4f}" if "held_out_loss" in r else "failed",
            fmt(r["score"]) if "score" in r else "failed",
        )
    return table


def run_table(out: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("model", overflow="fold", min_width=12)
    for col in ("params", "latency (ms)", "speed-up", *out["tasks"], "GLUE avg", "front"):
        table.add_column(col)
    for r in out["table"]:
        table.add_row(
            r["model"],
            f"{r['params'] / 1e6:.2f} M",
            fmt(r["latency_ms"]),
            f"{r['speedup']:.2f}x",
            *[fmt(r[t]) for t in out["tasks"]],
            fmt(r["glue"]),
            "*" if r["pareto"] else "",
        )
    return table


def space(name: str, summary: dict[str, Any]) -> Table:
    table = Table(title=f"architecture space of {name} ({summary['layers']} layers)")
    table.add_column("block")
    table.add_column("layers")
    table.add_column("paths", justify="right")
    for b, paths in enumerate(summary["paths_per_block"]):
        table.add_row(str(b + 1), str(summary["layers_per_block"]), f"{paths:,}")
    table.add_row("all", str(summary["layers"]), f"{summary['paths']:,} ({summary['paths']:.2e})")
    return table


def latency(model: str, params: int, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{model}: {params / 1e6:.2f}M parameters")
    for col in ("batch", "seq", "ms (trimmed mean)", "median ms", "GFLOPs", "threads", "device"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["batch_size"]),
            str(r["seq_len"]),
            fmt(r["ms"]),
            fmt(r["median_ms"]),
            fmt(r["flops"] / 1e9),
            str(r["threads"]),
            r["device"],
        )
    return table


def inspected(out: dict[str, Any], batch: int, seq_len: int, measured: bool) -> Table:
    table = Table(title=out["student"] + (f" (teacher {out['teacher']})" if out["teacher"] else ""))
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{out['parameters']:,}")
    table.add_row("  of which embeddings", f"{out['embedding_parameters']:,}")
    store = out.get("reference_store")
    if store:
        table.add_row("reference store, per example (fp16 bytes)", f"{store['bytes_per_example']:,}")
        if "bytes" in store:
            table.add_row(f"reference store, {store['examples']:,} examples (bytes)", f"{store['bytes']:,}")
    table.add_row(f"GFLOPs (batch {batch}, seq {seq_len})", fmt(out["flops"] / 1e9))
    if measured:
        table.add_row("latency ms (trimmed mean)", fmt(out["latency"]["ms"]))
        if "retrieval" in out:
            table.add_row("  + retrieval ms per input", fmt(out["retrieval"]["ms"]))
            table.add_row("latency with retrieval ms", fmt(out["latency_with_retrieval_ms"]))
    return table


def ago(seconds: float) -> str:
    """A time span as people say it: minutes, hours, then days."""
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def cache_entries(title: str, found: list[Any], now: float) -> Table:
    table = Table(title=f"{title}: {sum(e.bytes for e in found) / 1e6:,.1f} MB")
    for col in ("entry", "MB", "last used", "what"):
        table.add_column(col, justify="right" if col == "MB" else "left")
    for e in found:
        name = f"{e.path.parent.name}/{e.path.name}"  # the kind's folder and the entry's key
        table.add_row(name, f"{e.bytes / 1e6:,.1f}", ago(now - e.last_used), e.what)
    return table
