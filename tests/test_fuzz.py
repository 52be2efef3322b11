"""Fuzz test: mutated models and build folders never make the CLI print a traceback, hang, or exit oddly.

Mutated models: truncated/bit-flipped protobufs and structural mutations (nodes, attributes, shapes,
initializers, cycles...) of a mini QDQ MobileBERT and of the Deeploy conformance networks (when
shared/conformance is present), run through `golden` and `compile` (generic; some cluster8-ita, cortex-m4).
Mutated builds: damaged tinydeploy.json, golden.npz, weights.bin and generated C of a generic build (`verify`)
and of cluster8 and cortex-m4 builds (`simulate --max-cycles`). Mutators, driver and criteria: tests/fuzzing.py.

Pass, for every case: no exception escapes main(), exit code 0/1/2, exit 2 with exactly one `error:` line (the
last line on stderr), no "Traceback", done within fuzzing.CASE_TIMEOUT seconds, the worker process survives.

    .venv/bin/python -m pytest -q -p no:warnings -s tests/test_fuzz.py            # quick (500 cases)
    .venv/bin/python -m pytest -q -p no:warnings -s -m slow tests/test_fuzz.py    # 10,000 cases

Environment: TINYDEPLOY_FUZZ_QUICK / _SLOW (case counts), _SEED (first seed; the slow test starts 10^6 later),
_WORKERS (default 2), _STRICT=0 (let `error: internal error` lines pass; by default they fail: unchecked input).
A failing seed is reproduced with `.venv/bin/python tests/fuzzing.py run --work WORK --seed SEED -v` (the
assertion message prints the command with the corpus directory of the run).
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import fuzzing
import onnx
import pytest
from conftest import CONFORMANCE
from fuzzing import Corpus, NotApplicable, judge, make_case, run_argv

QUICK = int(os.environ.get("TINYDEPLOY_FUZZ_QUICK", "500"))
SLOW = int(os.environ.get("TINYDEPLOY_FUZZ_SLOW", "10000"))
SEED = int(os.environ.get("TINYDEPLOY_FUZZ_SEED", "0"))
WORKERS = int(os.environ.get("TINYDEPLOY_FUZZ_WORKERS", "2"))
STRICT = os.environ.get("TINYDEPLOY_FUZZ_STRICT", "1") == "1"   # internal errors fail too


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    """Mini MobileBERT (zoo, ~5 s), its generic/cluster8/cortex-m4 builds, and the Deeploy cases if present."""
    return fuzzing.prepare_corpus(tmp_path_factory.mktemp("fuzz"), CONFORMANCE if CONFORMANCE.is_dir() else None)


def _campaign(corpus: Corpus, seeds: range) -> None:
    campaign = fuzzing.run_campaign(corpus, seeds, workers=WORKERS, timeout=fuzzing.CASE_TIMEOUT)
    print()
    print(campaign.summary())
    assert len(campaign.results) == len(seeds)
    if STRICT:
        for r in campaign.results:
            if r.get("internal") and not r["problems"]:
                r["problems"] = [f"internal error: {r['error_lines'][0]}"]
    assert not campaign.failures, campaign.failure_report()


def test_fuzz_quick(corpus):
    """A few hundred seeded cases (about 20 s on two cores)."""
    _campaign(corpus, range(SEED, SEED + QUICK))


@pytest.mark.slow
def test_fuzz_slow(corpus):
    """>= 10,000 seeded cases, disjoint from the quick test's seeds."""
    _campaign(corpus, range(SEED + 1_000_000, SEED + 1_000_000 + SLOW))


# --- the fuzzer itself ---------------------------------------------------------------------------------------
def test_byte_mutators_mutate(corpus):
    data = Path(corpus.models[0]["path"]).read_bytes()
    for name in fuzzing.BYTE_MUTATORS:
        for seed in range(20):
            out, desc = fuzzing.mutate_bytes(data, random.Random(seed), name)
            assert out != data, f"{name} seed {seed}: {desc}"
            assert desc.startswith(f"bytes.{name}")


def test_structural_mutators_mutate(corpus):
    models = [corpus.models[0]["path"]]
    models += [m["path"] for m in corpus.models if m["name"] in ("deeploy/Attention", "deeploy/GEMM_TransB_RQ")]
    for path in models:
        original = onnx.load(path)
        reference = original.SerializeToString()
        for name in fuzzing.STRUCT_MUTATORS:
            applied = 0
            for seed in range(12):
                model = onnx.ModelProto()
                model.CopyFrom(original)
                try:
                    desc = fuzzing.mutate_model(model, random.Random(seed), count=1, kind=name)
                except NotApplicable:
                    continue
                applied += 1
                assert model.SerializeToString() != reference, f"{name} seed {seed} on {path}: {desc}"
            assert applied or Path(path).parent.name != "mobilebert", f"{name} never applied to MobileBERT"


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_mutators_mutate(corpus, tmp_path):
    for base in corpus.builds:
        original = _tree(Path(base["path"]))
        for name in fuzzing.BUILD_MUTATORS:
            for seed in range(8):
                copy = tmp_path / f"{base['name']}-{name}-{seed}"
                shutil.copytree(base["path"], copy)
                desc = fuzzing.mutate_build(copy, random.Random(seed), kind=name, count=1)
                assert _tree(copy) != original, f"{base['name']} {name} seed {seed}: {desc}"
                shutil.rmtree(copy)


def test_cases_are_reproducible(corpus, tmp_path):
    for seed in range(0, 400, 7):
        a, b = make_case(corpus, seed, tmp_path / "a"), make_case(corpus, seed, tmp_path / "b")
        assert (a.kind, a.base, a.mutation) == (b.kind, b.base, b.mutation)
        assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
        shutil.rmtree(tmp_path / "a")
        shutil.rmtree(tmp_path / "b")


def test_driver_catches_exceptions_and_hangs(monkeypatch):
    import tinydeploy.cli

    def boom(argv):
        raise RuntimeError("escaped")

    monkeypatch.setattr(tinydeploy.cli, "main", boom)
    result = run_argv(["golden", "x"], timeout=5)
    assert result["exception"] == "RuntimeError: escaped" and "test_fuzz.py" not in (result["frame"] or "")
    assert judge(result) == ["exception escaped main(): RuntimeError: escaped"]

    monkeypatch.setattr(tinydeploy.cli, "main", lambda argv: time.sleep(30))
    t0 = time.perf_counter()
    result = run_argv(["golden", "x"], timeout=0.5)
    assert result["timed_out"] and time.perf_counter() - t0 < 5
    assert judge(result)[0].startswith("no exit within")

    def noisy(argv):
        import sys

        print("error: first line\nsecond line", file=sys.stderr)
        return 2

    monkeypatch.setattr(tinydeploy.cli, "main", noisy)
    assert "spans several lines" in judge(run_argv(["golden", "x"]))[0]
    monkeypatch.setattr(tinydeploy.cli, "main", lambda argv: 3)
    assert judge(run_argv(["golden", "x"])) == ["exit code 3 not in 0/1/2"]


def test_driver_captures_the_cli_error_line(tmp_path):
    """rich's Console(stderr=True) follows the redirected sys.stderr: the error line is captured."""
    result = run_argv(["golden", str(tmp_path / "missing.onnx"), "--target", "generic", "-o", str(tmp_path / "o")])
    assert result["code"] == 2 and len(result["error_lines"]) == 1 and "does not exist" in result["error_lines"][0]
    assert judge(result) == []


def test_driver_survives_crash_hang_and_memory(corpus, monkeypatch, tmp_path):
    """Negative seeds are the driver's self-tests (fuzzing._self_test): each kills its worker in another way."""
    monkeypatch.setenv("TINYDEPLOY_FUZZ_HOG", str(800 << 20))
    campaign = fuzzing.run_campaign(corpus, [-1, -2, -3, 1], workers=1, timeout=1.0, hard_margin=1.0,
                                    memory_limit=500 << 20, scratch=tmp_path)
    by_seed = {r["seed"]: r for r in campaign.results}
    assert "signal 11" in by_seed[-1]["problems"][0] and "Segmentation fault" in by_seed[-1]["traceback"]
    assert by_seed[-2]["timed_out"] and "no answer within 2 s" in by_seed[-2]["problems"][0]
    assert "resident memory" in by_seed[-3]["problems"][0] and "in ones" in by_seed[-3]["traceback"]
    assert by_seed[1]["problems"] == [], by_seed[1]
