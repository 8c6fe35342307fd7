import pickle

import pytest
import torch

from shared.data.shard_cache import ShardedCache, cache_key


def _compute(calls):
    def compute(rows):
        calls.append((rows.start, rows.stop))
        idx = torch.arange(rows.start, rows.stop, dtype=torch.float32)
        return {"latent": idx[:, None, None].expand(-1, 2, 3).clone(), "mask": (idx % 2 == 0)[:, None].expand(-1, 4)}
    return compute


def test_build_reads_back_every_row_and_reuses_a_complete_cache(tmp_path):
    calls = []
    cache = ShardedCache.build(tmp_path, {"data": "a", "weights": 1}, 10, _compute(calls), shard_size=4)
    assert calls == [(0, 4), (4, 8), (8, 10)] and len(cache) == 10 and cache.names == ["latent", "mask"]
    row = cache[9]
    assert torch.equal(row["latent"], torch.full((2, 3), 9.0)) and row["mask"].tolist() == [False] * 4
    both = cache.rows([0, 5])
    assert both["latent"].shape == (2, 2, 3) and both["latent"][1, 0, 0] == 5
    again = ShardedCache.build(tmp_path, {"weights": 1, "data": "a"}, 10, _compute(calls), shard_size=4)
    assert len(calls) == 3 and again.folder == cache.folder  # same description (any key order): reused
    ShardedCache.build(tmp_path, {"data": "a", "weights": 2}, 10, _compute(calls), shard_size=4)
    assert len(calls) == 6  # changed weights: a new cache
    with pytest.raises(IndexError):
        cache[10]
    clone = pickle.loads(pickle.dumps(cache))  # loader workers get a copy that opens its own handles
    assert torch.equal(clone[3]["latent"], cache[3]["latent"])


def test_an_interrupted_build_computes_only_the_missing_shards(tmp_path):
    calls = []
    ShardedCache.build(tmp_path, "d", 10, _compute(calls), shard_size=4)
    folder = tmp_path / cache_key("d")
    (folder / "manifest.json").unlink()  # killed before the manifest: incomplete
    (folder / "shard_00001.safetensors").unlink()
    (folder / ".shard_00002.safetensors.0.tmp").write_bytes(b"half")  # a write the kill cut short
    with pytest.raises(FileNotFoundError, match="not a complete cache"):
        ShardedCache(folder)
    calls.clear()
    cache = ShardedCache.build(tmp_path, "d", 10, _compute(calls), shard_size=4)
    assert calls == [(4, 8)] and torch.equal(cache[6]["latent"], torch.full((2, 3), 6.0))


def test_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="length >= 1"):
        ShardedCache.build(tmp_path, "d", 0, _compute([]))


def test_scale_benchmark_measures_both_cache_modes(tiny_synth, tmp_path, load_benchmark):
    bench = load_benchmark("scale_synth")
    data, _ = tiny_synth
    from shared.data.prepare import prepare_dataset

    prepare_dataset(data / "annotation.json", tmp_path / "prepared", size=64, progress=False)
    annotation = str(tmp_path / "prepared" / "annotation.json")
    sharded = bench.measure(annotation, "sharded", str(tmp_path / "cache"), "zoo:radclip_small", "zoo:autoencoder64", 2)
    memory = bench.measure(annotation, "memory", None, "zoo:radclip_small", "zoo:autoencoder64", 2)
    assert sharded["studies"] == memory["studies"] > 0 and list((tmp_path / "cache").glob("*/manifest.json"))
    for row in (sharded, memory):
        assert row["read_samples_per_s"] > 0 and row["peak_rss_mb"] > 0 and row["build_seconds"] >= 0
