"""Grain pipelines: per-stage samples, determinism, process sharding, bad records, checkpointed state."""

from __future__ import annotations

import logging

import grain
import numpy as np
import pytest

from data_pipelines import pipelines, records, schema
from tests.fakes import FakeClips

N_CLIPS = 12


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    records.write_dataset(root, N_CLIPS, FakeClips(frames=8, size=16, identities=6), clips_per_shard=5,
                          progress=False)
    return root


def _batches(ds, n, bs=4, **kw):
    it = pipelines.make_iterator(ds, bs, **kw)
    return [next(it) for _ in range(n)]


def _same(a, b):
    return all(a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a) for a, b in zip(a, b))


def test_animator_samples(data_dir):
    ds = pipelines.make_dataset("animator", data_dir, split="all", shard_index=0, shard_count=1)
    (batch,) = _batches(ds, 1, bs=8)
    assert batch["source"].shape == (8, 16, 16, 3) and batch["source"].dtype == np.uint8
    assert batch["target"].shape == (8, 16, 16, 3)
    assert batch["descriptor_window"].shape == (8, 27, 72)
    fake = FakeClips(frames=8, size=16, identities=6)
    for b in range(8):
        clip = fake(int(batch["clip_index"][b]))
        t, target = len(clip["frames"]), int(batch["start"][b])
        want = clip["descriptors"][np.clip(np.arange(target - 13, target + 14), 0, t - 1)]
        np.testing.assert_array_equal(batch["descriptor_window"][b], want)  # centred, clamped
        np.testing.assert_allclose(batch["target"][b].astype(int), clip["frames"][target], atol=3)


def test_animator_expression_pairs_take_the_most_different_expression_nearby(data_dir):
    sampler = pipelines.AnimatorSampler(clips=None, window=27, expression_pairs=1.0, expression_radius=3)
    fake = FakeClips(frames=8, size=16, identities=6)
    for i in range(N_CLIPS):
        clip = fake(i)
        t = len(clip["frames"])
        clip["descriptors"] = np.random.default_rng(100 + i).normal(size=(t, 72)).astype(np.float32)
        clip["frames"] = [schema.encode_jpeg(f, 95) for f in clip["frames"]]
        out = sampler.sample(schema.DictClip(clip), np.random.default_rng(i))
        rng = np.random.default_rng(i)  # the sampler's draws: (target, source), then the coin
        _, source = rng.integers(0, t, size=2)
        exp = clip["descriptors"][:, schema.EXPRESSION].astype(np.float64)
        lo, hi = max(0, source - 3), min(t, source + 4)
        want = lo + int(np.argmax(np.abs(exp[lo:hi] - exp[source]).sum(1)))
        assert int(out["start"]) == want != source
        np.testing.assert_array_equal(out["descriptor_window"][13], clip["descriptors"][want])
    # 0 keeps the uniform pairs (and the sample stream of earlier versions: tests/golden_batches.py)
    clips = records.ClipDataset(data_dir)
    plain = pipelines.AnimatorSampler(clips=clips, window=27)
    target, _ = np.random.default_rng(5).integers(0, clips.view(5).num_frames, size=2)
    assert int(plain.sample(clips.view(5), np.random.default_rng(5))["start"]) == target
    with pytest.raises(ValueError, match="expression_pairs"):
        pipelines.make_dataset("animator", data_dir, expression_pairs=1.5)


def test_animator_mouth_box_covers_both_frames_mouths():
    """With ``mouth_margin`` the sample carries the box of both frames' mouth landmarks (the eval's
    ``mouth_box``), which the animator's mouth loss weights; a clip without landmarks stops the
    run with what to do (skipping it would skip every clip of such a dataset)."""
    from gohd_jax.eval.mouth_motion import mouth_box

    sampler = pipelines.AnimatorSampler(clips=None, window=27, mouth_margin=1)
    clip = FakeClips(frames=8, size=16, identities=6)(0)
    clip["frames"] = [schema.encode_jpeg(f, 95) for f in clip["frames"]]
    lm = np.random.default_rng(0).uniform(0, 16, size=(8, 68, 2)).astype(np.float32)
    lm[:, 48:68] = lm[:, 48:68] * 0.25 + np.arange(8)[:, None, None]  # the mouth moves with t
    clip["aux"] = {"landmarks": lm}
    out = sampler.sample(schema.DictClip(clip), np.random.default_rng(3))
    target, source = np.random.default_rng(3).integers(0, 8, size=2)
    want = mouth_box(lm[[source, target]], 16, margin=1)
    assert out["mouth_box"].dtype == np.int32 and tuple(out["mouth_box"]) == want
    assert want != mouth_box(lm[[target]], 16, margin=1)  # both frames count, not the target's alone
    del clip["aux"]
    sampler = pipelines.AnimatorSampler(clips=[clip], window=27, mouth_margin=1)
    with pytest.raises(records.DatasetError, match="loss.mouth=0"):
        sampler.random_map(0, np.random.default_rng(3))  # an error, not a skipped record


def test_motion_and_expression_samples(data_dir):
    ds = pipelines.make_dataset("motion", data_dir, window=6, split="all", shard_index=0, shard_count=1)
    (m,) = _batches(ds, 1)
    assert m["cond"].shape == (4, 6, 320) and m["pose"].shape == (4, 6, 6) and m["gaze"].shape == (4, 6, 2)
    np.testing.assert_array_equal(m["pose"][:, 0], 0)  # residual to the window's first frame
    fake = FakeClips(frames=8, size=16, identities=6)
    clip = fake(int(m["clip_index"][0]))
    start = int(m["start"][0])
    np.testing.assert_array_equal(m["pose0"][0], clip["descriptors"][start, schema.POSE])
    np.testing.assert_array_equal(m["gaze"][0], clip["descriptors"][start:start + 6, schema.GAZE])

    ds = pipelines.make_dataset("expression", data_dir, window=5, split="all", shard_index=0, shard_count=1)
    (e,) = _batches(ds, 1)
    assert e["mel_windows"].shape == (4, 5, 80, 16) and e["expression"].shape == (4, 5, 64)
    assert e["controls"].shape == (4, 5, 21)
    np.testing.assert_array_equal(e["exp0"], e["expression"][:, 0])


def test_deterministic_for_a_seed(data_dir):
    make = lambda seed: pipelines.make_dataset("animator", data_dir, seed=seed, split="all",  # noqa: E731
                                              shard_index=0, shard_count=1)
    assert _same(_batches(make(3), 3), _batches(make(3), 3))
    assert not _same(_batches(make(3), 3), _batches(make(4), 3))


def test_process_shards_are_disjoint(data_dir):
    seen = []
    for k in range(2):
        ds = pipelines.make_dataset("animator", data_dir, split="all", num_epochs=1, shard_index=k, shard_count=2)
        seen.append({int(x["clip_index"]) for x in ds})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(N_CLIPS))


def test_processes_read_one_global_stream_with_their_own_draws(data_dir):
    """Two processes interleave the one-process stream: same samples, different random draws
    (window starts) at the same local position; no more clips needed than there are processes."""
    one = pipelines.make_dataset("motion", data_dir, window=6, split="all", shard_index=0, shard_count=1)
    parts = [pipelines.make_dataset("motion", data_dir, window=6, split="all", shard_index=k, shard_count=2)
             for k in range(2)]
    for i in range(12):
        for k in range(2):
            a, b = parts[k][i], one[2 * i + k]
            assert (int(a["clip_index"]), int(a["start"])) == (int(b["clip_index"]), int(b["start"]))
    starts = [[int(p[i]["start"]) for i in range(12)] for p in parts]
    assert starts[0] != starts[1]  # one seed per process used to repeat these across processes
    few = pipelines.make_dataset("motion", data_dir, window=6, split="all", shard_index=5, shard_count=64)
    assert int(few[0]["clip_index"]) == int(one[5]["clip_index"])


def test_heldout_split_is_by_identity(data_dir):
    ids = lambda split: {records.ClipDataset(data_dir).index[int(x["clip_index"])]["identity_id"]  # noqa: E731
                         for x in pipelines.make_dataset("animator", data_dir, split=split, num_epochs=1,
                                                         shard_index=0, shard_count=1)}
    train, held = ids("train"), ids("heldout")
    assert train and held and not train & held
    assert len(held) == round(0.25 * 6)


def test_short_clips_are_left_out(data_dir, caplog):
    with caplog.at_level(logging.WARNING):
        ds = pipelines.make_dataset("motion", data_dir, window=10, split="all", num_epochs=1,
                                    shard_index=0, shard_count=1)
    assert "shorter than 10 frames" in caplog.text
    # Clips i with 8 + i % 3 >= 10 frames: i % 3 == 2.
    assert {int(x["clip_index"]) for x in ds} == {i for i in range(N_CLIPS) if i % 3 == 2}
    with pytest.raises(records.DatasetError, match="no 'all' clips with >= 11 frames"):
        pipelines.make_dataset("motion", data_dir, window=11, split="all", shard_index=0, shard_count=1)


class _BadAtTwo(records.ClipDataset):
    """Clip 2's descriptor chunk comes back truncated from the read (a corrupted record)."""

    def read(self, i, offsets):
        bad = schema.ClipLayout(10).chunk_record(0, "per_frame") if i == 2 else None
        return [d[:-20] if k == bad else d for k, d in zip(offsets, super().read(i, offsets))]


def test_bad_record_is_skipped_with_a_count(data_dir, caplog):
    ds = pipelines.make_dataset("animator", _BadAtTwo(data_dir), split="all", num_epochs=1,
                                shard_index=0, shard_count=1)
    with caplog.at_level(logging.WARNING):
        seen = [int(x["clip_index"]) for x in ds.to_iter_dataset()]
    assert sorted(seen) == [i for i in range(N_CLIPS) if i != 2]
    assert "skipping bad record (1 so far" in caplog.text and "cannot decode" in caplog.text
    assert "clip fake-0002 (clips-00000-of-00003.array_record record" in caplog.text


def test_iterator_state_restores_identical_batches(data_dir, tmp_path):
    import orbax.checkpoint as ocp

    ds = pipelines.make_dataset("expression", data_dir, window=5, split="all", shard_index=0, shard_count=1)
    it = pipelines.make_iterator(ds, 4, num_workers=1)
    for _ in range(3):
        next(it)
    mngr = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data_iter",))
    mngr.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = [next(it) for _ in range(3)]

    fresh = pipelines.make_iterator(ds, 4, num_workers=1)
    mngr.restore(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
    mngr.close()
    assert _same([next(fresh) for _ in range(3)], expected)
    # And in-process (0 workers) through get_state/set_state, matching the worker stream.
    it0 = pipelines.make_iterator(ds, 4)
    for _ in range(3):
        next(it0)
    assert _same([next(it0) for _ in range(3)], expected)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 37, 1000, 4097, 65536, 65537])
def test_epoch_shuffle_is_grains_shuffle(n):
    """The whole-epoch permutation equals Grain's per-index ``index_shuffle`` (the cipher, the
    cycle walks, the 2^16 edge), and ``EpochShuffle`` repeats epochs as ``.shuffle().repeat()``."""
    from grain._src.python.experimental.index_shuffle.python import index_shuffle_module as ish

    from data_pipelines.shuffle import EpochShuffle, permutation

    rng = np.random.default_rng(n)
    for seed in (0, 7, int(rng.integers(0, 2**32))):
        idx = np.arange(n) if n <= 5000 else rng.integers(0, n, 200)
        want = [ish.index_shuffle(int(i), max_index=n - 1, seed=seed, rounds=4) if n > 1 else 0 for i in idx]
        np.testing.assert_array_equal(permutation(seed, n)[idx], want)
    if n <= 1000:
        a = grain.MapDataset.source(list(range(n))).seed(5).shuffle().repeat(3)
        b = EpochShuffle(grain.MapDataset.source(list(range(n))).seed(5)).repeat(3)
        assert [a[i] for i in range(3 * n)] == [b[i] for i in range(3 * n)]


def test_epoch_shuffle_draws_per_index_past_its_table():
    """Past 2^24 items no table is built (it would be the whole set each epoch): each index is
    drawn as Grain draws it, the same order."""
    from data_pipelines.shuffle import EpochShuffle, permutation

    n = 2**25
    with pytest.raises(ValueError, match="draw per index"):
        permutation(0, n)
    a = grain.MapDataset.source(range(n)).seed(1).shuffle().repeat(2)
    b = EpochShuffle(grain.MapDataset.source(range(n)).seed(1)).repeat(2)
    for i in (0, 5, n - 1, n + 3):
        assert a[i] == b[i]
