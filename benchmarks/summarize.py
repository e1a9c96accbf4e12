"""The table of issue 6's targets from one gpu_check run: ours, the peer's figure from the same call, the ratio.

    python3 benchmarks/summarize.py OUT_DIR      re-print the table from OUT_DIR/results.json and peer_baseline.json

Peer figures come from the peers' script (peer_baseline.json) where it measures the configuration, and from our
own --compare timm run in the same call where it does not (timm torch.compile inference, since the peers' compile
section costs two more compilations than the budget has).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

PEER_TRAIN = "timm fp16-amp NHWC eager"
PEER_B1_GRAPH = "timm fp16 NHWC b1 cudagraph"


def _result(results: dict, step: str) -> dict:
    return results.get(step, {}).get("result") or {}


def _best(results: dict, steps: tuple[str, ...], key: str, lowest: bool = False) -> tuple[str | None, dict]:
    measured = [(step, _result(results, step)) for step in steps if key in _result(results, step)]
    if not measured:
        return None, {}
    return (min if lowest else max)(measured, key=lambda item: item[1][key])


def _number(value, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "not measured"
    return f"{value:,.{digits}f}{unit}"


def _ratio(ours, theirs, goal: float, at_most: bool = False) -> tuple[str, str]:
    if ours is None or not theirs:
        return "n/a", "n/a"
    ratio = ours / theirs
    met = ratio <= goal if at_most else ratio >= goal
    return f"{ratio:.2f}x", ("yes" if met else "NO") + f" ({'<=' if at_most else '>='} {goal}x)"


def summary_table(results: dict, peer: dict) -> str:
    rows = []
    peer_train = peer.get("train", {}).get(PEER_TRAIN, {})
    peer_infer = peer.get("infer", {})

    step, ours = _best(results, ("train_eager", "train_graphs", "train_compile", "train_compile_graphs"), "img_s")
    rows.append(("training, synthetic, b256, AMP fp16, NHWC", f"{_number(ours.get('img_s'), unit=' img/s')} ({step})",
                 f"{_number(peer_train.get('img_s'), unit=' img/s')} (timm eager, peers' script)",
                 *_ratio(ours.get("img_s"), peer_train.get("img_s"), 1.3)))
    rows.append(("training peak memory (same run)", _number(ours.get("peak_memory_gb"), 2, " GB"),
                 _number(peer_train.get("peak_mem_GB"), 2, " GB"),
                 *_ratio(ours.get("peak_memory_gb"), peer_train.get("peak_mem_GB"), 1.0, at_most=True)))

    synthetic, jpeg = _result(results, "train_eager"), _result(results, "train_jpeg")
    backend = jpeg.get("data_backend", "?")
    rows.append((f"training on JPEGs ({backend} backend) vs our synthetic", _number(jpeg.get('img_s'), unit=' img/s'),
                 f"{_number(synthetic.get('img_s'), unit=' img/s')} (ours, synthetic, eager)",
                 *_ratio(jpeg.get("img_s"), synthetic.get("img_s"), 0.95)))

    step, ours = _best(results, ("infer_b256_eager", "infer_b256_fold", "infer_b256_compile"), "img_s")
    timm_compiled = _result(results, "infer_b256_compile").get("compare", {})
    rows.append(("inference b256", f"{_number(ours.get('img_s'), unit=' img/s')} ({step})",
                 f"{_number(timm_compiled.get('img_s'), unit=' img/s')} (timm torch.compile, our --compare)",
                 *_ratio(ours.get("img_s"), timm_compiled.get("img_s"), 1.1)))

    step, ours = _best(results, ("infer_b1_graph", "infer_b1_graph_fold", "infer_b1_compile_graph"), "latency_ms",
                       lowest=True)
    timm_graph = peer_infer.get(PEER_B1_GRAPH, {})
    rows.append(("inference b1 latency", f"{_number(ours.get('latency_ms'), 3, ' ms')} ({step})",
                 f"{_number(timm_graph.get('latency_ms'), 3, ' ms')} (timm CUDA graph, peers' script)",
                 *_ratio(ours.get("latency_ms"), timm_graph.get("latency_ms"), 0.8, at_most=True)))

    errors: dict[str, list[tuple[float, str]]] = {}
    for step, record in results.items():
        measured = record.get("result") if isinstance(record, dict) else None
        if measured and "logits_rel_err" in measured:
            errors.setdefault(measured["precision"], []).append((measured["logits_rel_err"], step))
    for precision, measured in sorted(errors.items()):
        error, step = max(measured)
        rows.append((f"logits relative error vs fp32, {precision} (largest of {len(measured)} runs)",
                     f"{error:.2e} ({step})", "goal < 1e-2", "", "yes" if error < 1e-2 else "NO"))

    env = results.get("env", {})
    lines = [f"device: {env.get('device')}  torch {env.get('torch')}  cuDNN {env.get('cudnn')}  "
             f"{'(CPU DRY RUN: not GPU figures)' if results.get('quick') else ''}",
             "", "| target | ours | peer, same call | ratio | met |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "| step | status | s | img/s | ms/step | peak GB | MFU | logits err | compare ratio |",
              "|---|---|---|---|---|---|---|---|---|"]
    for step, record in results.items():
        if not isinstance(record, dict) or "status" not in record:
            continue
        measured = record.get("result") or {}
        if "best" in measured:  # the data step: the fastest backend's rate
            measured = {"img_s": measured["backends"][measured["best"]]["images_per_second"]}
        compare, error_key = measured.get("compare", {}), "logits_rel_err"
        mfu = measured.get("mfu")
        lines.append(f"| {step} | {record['status']} | {record.get('seconds', '')} | "
                     f"{_number(measured.get('img_s'), 1) if 'img_s' in measured else ''} | "
                     f"{_number(measured.get('step_ms'), 2) if 'step_ms' in measured else ''} | "
                     f"{_number(measured.get('peak_memory_gb'), 2) if measured.get('peak_memory_gb') else ''} | "
                     f"{f'{100 * mfu:.1f}%' if mfu is not None else ''} | "
                     f"{f'{measured[error_key]:.1e}' if error_key in measured else ''} | "
                     f"{_number(compare.get('ratio'), 2) if compare else ''} |")
    data = _result(results, "data")
    if data.get("backends"):
        loaders = data["backends"]
        lines += ["", f"| data loader (b{data['batch_size']}, {data['workers']} workers, in turns) | img/s | "
                      "vs torchvision pipeline | fast path vs the path it replaces |", "|---|---|---|---|"]
        replaced = {"pytorch": "pytorch-full", "gpu": "gpu-per-sample"}
        for name, figures in loaders.items():
            plain = loaders.get(replaced.get(name, ""))
            versus = (f"{figures['images_per_second'] / plain['images_per_second']:.2f}x vs {replaced[name]}"
                      if plain else "")
            lines.append(f"| {name} | {_number(figures['images_per_second'], 0)} | "
                         f"{_number(figures.get('ratio'), 2)}x | {versus} |")
        if data.get("compare"):
            lines.append(f"| torchvision (ImageFolder, PIL) | {_number(data['compare']['images_per_second'], 0)} | "
                         "1.00x | |")
    peer_rows = [(name, values) for section in ("train", "infer") for name, values in peer.get(section, {}).items()]
    if peer_rows:
        lines += ["", "| peers' script | img/s | ms | peak GB |", "|---|---|---|---|"]
        lines += [f"| {name} | {values['img_s']:,.1f} | {values.get('step_ms', values.get('latency_ms', 0)):.2f} | "
                  f"{_number(values.get('peak_mem_GB'), 2) if values.get('peak_mem_GB') else ''} |"
                  for name, values in peer_rows]
    return "\n".join(lines)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gpu_check")
    peer_path = out / "peer_baseline.json"
    print(summary_table(json.loads((out / "results.json").read_text()),
                        json.loads(peer_path.read_text()) if peer_path.is_file() else {}))
