"""The training-throughput benchmark's core, in-process, on the cpu-quick preset (nanoGPT's baby shape)."""

import json

from benchmarks import train as bench
from llm.runtime.hardware import cpu_processor, describe_processor


def test_cpu_quick_preset_writes_sane_rows(tmp_path):
    meta, rows, (json_path, md_path) = bench.run_benchmark("cpu-quick", out_dir=tmp_path, steps=2, warmup=1,
                                                           log=lambda *a: None)
    assert json_path == tmp_path / "train_cpu-quick.json" and md_path.exists()
    data = json.loads(json_path.read_text())
    assert data["meta"]["preset"] == "cpu-quick" and "12*L*H*Q*T" in data["meta"]["flop_convention"]
    assert data["meta"]["peak_flops"] > 0
    assert [r["name"] for r in data["rows"]] == ["baby"]
    for row in data["rows"]:
        assert row["status"] == "ok", row.get("error")
        assert row["ms_per_step"] > 0 and row["tokens_per_s"] > 0
        assert 0 < row["mfu"] < 1
        assert row["compile_s"] > 0 and row["first_step_s"] > 0 and row["steps"] == 2
        assert row["params"] == row["params_formula"]  # the closed form matches the built model
        assert row["tokens_per_step"] == 12 * 64
    assert "| baby |" in md_path.read_text()
    # CPU timings differ by processor (AMX or AVX2 only): the results name it
    assert data["meta"]["processor"] == cpu_processor()["model"]
    assert f"CPU {describe_processor()}" in md_path.read_text()
    assert rows == data["rows"] and meta["summary"][0].startswith("best MFU: baby")


def test_repeated_runs_are_summarised_by_their_median():
    rows = [{"name": name, "kind": "train", "status": "ok", "run": run, "ms_per_step": ms, "mfu": 0.1,
             "tflops": 0.01, "peak_flops": 1e11, "tokens_per_s": 1.0}
            for run, (a, b) in enumerate([(30.0, 20.0), (90.0, 25.0), (31.0, 21.0)], 1)
            for name, ms in (("baby", a), ("baby-bfloat16-matmuls", b))]
    lines = bench.summary(rows, "cpu")
    assert "baby: median 31.0 ms/step over 3 runs (30.0, 90.0, 31.0)" in lines
    assert "baby-bfloat16-matmuls: median 21.0 ms/step over 3 runs (20.0, 25.0, 21.0)" in lines


def test_failures_become_rows_not_crashes():
    bad = bench.Spec("bad", "shakespeare_char", "baby", (("model.vocab_size", 65), ("model.n_heads", 3)))
    row = bench.run_spec(bad, steps=1, warmup=1)
    assert row["status"] == "error" and "n_heads" in row["error"]


def test_presets_and_specs_round_trip():
    gpu = bench.preset_specs("gpu")
    assert 6 <= len(gpu) <= 8 and len({s.name for s in gpu}) == len(gpu)
    assert {s.name.split("-")[1] for s in gpu} == {"cudnn", "flash", "xla"}
    for s in gpu:
        assert bench.Spec.from_json(s.to_json()) == s
        config = bench.build_config(s)  # every GPU configuration is a valid experiment config
        assert config.model.dtype == "bfloat16" and config.model.scan_layers and config.model.max_len == 2048


def test_sampling_benchmark_runs_and_both_methods_agree(tmp_path):
    from benchmarks import sampling

    assert sampling.main(["--new-tokens", "6", "--prompt-len", "5", "--batches", "1,2", "--repeats", "1",
                          "--d-model", "64", "--layers", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "sampling_cpu.json").read_text())
    assert [(r["method"], r["batch"]) for r in data["rows"]] == [("kv-cache", 1), ("kv-cache", 2), ("recompute", 1)]
    assert data["rows"][-1]["greedy_tokens_equal_kv_cache"] is True
    assert all(r["tokens_per_s"] > 0 for r in data["rows"]) and data["meta"]["kv_cache_speedup_batch1"] > 0
