"""What ``kvstack bench ttft`` prints and writes: the components, the cells (measured or derived, said
on every row), how far the derivation was from the cells measured both ways, and a JSON record."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict

from kvstack.linkbench.ttft import MEASURED, Result


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f}"


def environment(device) -> dict:
    """Date, device and versions: what a RESULTS.md entry must name."""
    import datetime
    import os
    import platform

    import torch
    import transformers

    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else platform.processor() or "cpu"
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": name, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average": round(os.getloadavg()[0], 2)}


def derivation_errors(result: Result) -> list[float]:
    """(derived - measured) / measured TTFT of every measured cell: how good the derivation is here."""
    return [(r.derived_s - r.ttft_s) / r.ttft_s for r in result.rows if r.how == MEASURED and r.ttft_s > 0]


def components_table(result: Result) -> str:
    from kvstack.cli_text import table

    rows = [(str(tokens), name, f"{c.nbytes:,}", _ms(result.encode_s[(tokens, name)]), _ms(c.receive_s),
             f"{c.nbytes / max(c.receive_s, 1e-9) / 1e6:.0f}", _ms(c.answer_s))
            for (tokens, name), c in sorted(result.components.items(), key=lambda kv: kv[0][0])]
    return table(rows, ("tokens", "path", "bytes", "encode ms (sender)", "receive ms", "receive MB/s", "answer ms"))


def cells_table(result: Result) -> str:
    from kvstack.cli_text import table

    spec = result.spec
    deadline = spec.deadline_ms is not None
    header = ["tokens", "Gbit/s", "path", "bytes", "TTFT ms", "how", "receive ms", "answer ms", "link MB/s",
              "accuracy", "derived ms"]
    if deadline:
        header += ["predicted ms", f"meets {spec.deadline_ms:g} ms"]
    rows = []
    for r in result.rows:
        row = [str(r.tokens), f"{r.gbit:g}", r.name, f"{r.bytes:,}", _ms(r.ttft_s), r.how, _ms(r.receive_s),
               _ms(r.answer_s), "-" if r.link_rate is None else f"{r.link_rate / 1e6:.1f}",
               "-" if r.accuracy is None else f"{r.accuracy:.2f}", _ms(r.derived_s)]
        if deadline:
            row += [_ms(r.predicted_s), "yes" if r.meets else "no"]
        rows.append(tuple(row))
    return table(rows, tuple(header))


def format_result(result: Result) -> str:
    """Components, cells, the derivation's error on measured cells and, with a deadline, the plans."""
    out = ("measured components (unshaped loopback pull; receive = request to cache decoded on the device, "
           "answer = cache or text to first token):\n" + components_table(result) + "\n\n")
    out += ("cells (how: measured = link shaped for real; derived = max((bytes - burst) / rate, receive) + answer"
            " from the components, a lower bound: it assumes decoding fully overlaps the transfer):\n"
            + cells_table(result))
    errors = derivation_errors(result)
    if errors:
        mid = 100 * statistics.median(errors)
        out += (f"\n\nderived vs measured on the {len(errors)} measured cells: median {mid:+.1f}%,"
                f" range {100 * min(errors):+.1f}% to {100 * max(errors):+.1f}%")
    if result.plans:
        out += "\n\nadaptive plans (level per layer):\n"
        for (tokens, gbit), plan in sorted(result.plans.items()):
            levels = " ".join(plan.levels) if plan.levels else "everything as text"
            out += (f"  {tokens} tokens, {gbit:g} Gbit/s: {levels}; predicted {1000 * plan.predicted_s:.0f} ms, damage"
                    f" {plan.damage:.4f}{'' if plan.meets else ' (no plan meets the deadline: fastest)'}\n")
    return out


def to_json(result: Result, env: dict) -> str:
    """Everything measured, machine-readable (rows, components, spec, environment)."""
    return json.dumps({
        "environment": env,
        "spec": asdict(result.spec),
        "components": [{"tokens": t, "path": n, **asdict(c), "encode_s": result.encode_s[(t, n)]}
                       for (t, n), c in result.components.items()],
        "rows": [asdict(r) for r in result.rows],
        "derivation_errors": derivation_errors(result),
    }, indent=1)
