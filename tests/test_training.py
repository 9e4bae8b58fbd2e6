"""The training system: mixed sampling, exact resume, freezing, DDP, and a model that learns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from f2lightning.data import dataset as dataset_module
from f2lightning.data.sampler import MixedTaskSampler, ResumableBatchSampler
from f2lightning.images import load_image
from f2lightning.model import Florence2, Florence2Config
from f2lightning.training.optim import build_optimizer
from tests.helpers import training as helpers

ROOT = Path(__file__).resolve().parents[1]
# Without dropout / drop-path two computations of one step are deterministic and comparable.
NO_DROPOUT = {
    "vision": {**helpers.MICRO["vision"], "drop_path_rate": 0.0},
    "text": {**helpers.MICRO["text"], "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0},
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic")
    dm = helpers.datamodule(path)
    dm.prepare_data()  # writes the images and trains the tokenizer once for the whole module
    return path


# ---------------------------------------------------------------------------- sampling
def test_mixed_sampling_follows_weights():
    weights = {"a": 1.0, "b": 3.0, "c": 6.0}
    sampler = MixedTaskSampler({"a": 50, "b": 7, "c": 300}, weights, epoch_length=20_000, seed=3)
    counts = Counter()
    bounds = {"a": range(0, 50), "b": range(50, 57), "c": range(57, 357)}
    for index in sampler:
        counts[next(task for task, r in bounds.items() if index in r)] += 1
    for task, weight in weights.items():
        p = weight / sum(weights.values())
        sigma = (20_000 * p * (1 - p)) ** 0.5
        assert abs(counts[task] - 20_000 * p) < 4 * sigma, (task, counts)


def test_each_task_uses_all_its_samples_before_repeating():
    sampler = MixedTaskSampler({"a": 10, "b": 10}, {"a": 1.0, "b": 1.0}, epoch_length=40, seed=0)
    stream = list(sampler)
    first_a = [i for i in stream if i < 10][:10]
    assert sorted(first_a) == list(range(10))


def test_ranks_get_disjoint_streams_covering_the_global_one():
    sizes, weights = {"a": 30, "b": 30}, {"a": 1.0, "b": 2.0}
    whole = MixedTaskSampler(sizes, weights, epoch_length=60, seed=1).global_stream()
    ranks = [
        list(MixedTaskSampler(sizes, weights, epoch_length=60, seed=1, rank=r, world_size=2)) for r in (0, 1)
    ]
    positions = [list(range(r, 60, 2)) for r in (0, 1)]
    assert [[whole[p] for p in pos] for pos in positions] == ranks
    assert len(ranks[0]) == len(ranks[1]) == 30


def test_new_epoch_reshuffles_and_resume_skips_done_batches():
    sampler = MixedTaskSampler({"a": 40}, epoch_length=40, seed=0)
    batches = ResumableBatchSampler(sampler, batch_size=4)
    epoch0 = list(batches)
    sampler.set_epoch(1)
    assert list(batches) != epoch0
    sampler.set_epoch(0)
    batches.resume(epoch=0, batches_done=3)
    # The length stays the whole epoch's: Lightning counts the 3 restored batches itself and ends the epoch at 10.
    assert len(batches) == 10
    assert list(batches) == epoch0[3:]
    assert list(batches) == epoch0  # the skip applies to the interrupted pass only


def test_length_bucketing_reduces_padding_and_keeps_samples():
    lengths = [(i * 37) % 101 for i in range(400)]
    sampler = MixedTaskSampler({"a": 400}, epoch_length=400, seed=0)
    plain = list(ResumableBatchSampler(sampler, 8))
    bucketed = list(ResumableBatchSampler(sampler, 8, lengths=lengths, bucket_batches=10))

    def waste(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert sorted(i for b in bucketed for i in b) == sorted(i for b in plain for i in b)
    assert waste(bucketed) < waste(plain) / 3


def _images_by_index(sizes: dict[str, int]) -> list[str]:
    """Task a has one sample per image 0..29; task b two per image for images 0..9 only."""
    return [f"img{i}" for i in range(sizes["a"])] + [f"img{i // 2}" for i in range(sizes["b"])]


def test_same_image_runs_keep_the_task_mix_and_share_images_where_they_can():
    sizes, weights = {"a": 30, "b": 20}, {"a": 1.0, "b": 1.0}
    images = _images_by_index(sizes)
    plain = MixedTaskSampler(sizes, weights, epoch_length=400, seed=2).global_stream()
    runs = MixedTaskSampler(sizes, weights, epoch_length=400, seed=2, tasks_per_image=2, image_keys=images)
    stream = runs.global_stream()
    assert [i < 30 for i in stream] == [i < 30 for i in plain]  # the same task at every position
    pairs = [stream[i : i + 2] for i in range(0, 400, 2)]
    assert all(first != second for first, second in pairs)  # never the same sample twice in a run
    shared = [images[first] == images[second] for first, second in pairs]
    # A run shares its image when the second task has another sample of it: b covers images 0..9 only, and a
    # has one sample per image, so a second a-draw shares only after a b-draw.
    possible = [(images[first] in images[30:]) if second >= 30 else first >= 30 for first, second in pairs]
    assert shared == possible and sum(shared) > 40
    # Each rank gets whole runs; the ranks cover the stream once.
    ranks = [
        list(
            MixedTaskSampler(
                sizes,
                weights,
                epoch_length=400,
                seed=2,
                rank=r,
                world_size=2,
                tasks_per_image=2,
                image_keys=images,
            )
        )
        for r in (0, 1)
    ]
    assert ranks[0] == [i for pair in pairs[0::2] for i in pair] and ranks[1] == [
        i for pair in pairs[1::2] for i in pair
    ]


def test_length_bucketing_moves_same_image_runs_as_one():
    sizes = {"a": 30, "b": 20}
    images = _images_by_index(sizes)
    lengths = [(i * 37) % 101 for i in range(50)]
    sampler = MixedTaskSampler(sizes, epoch_length=200, seed=0, tasks_per_image=2, image_keys=images)
    runs = {tuple(sampler.global_stream()[i : i + 2]) for i in range(0, 200, 2)}
    batches = list(ResumableBatchSampler(sampler, 4, lengths=lengths, bucket_batches=5))
    assert {tuple(b[i : i + 2]) for b in batches for i in (0, 2)} == runs
    with pytest.raises(ValueError, match="multiple of tasks_per_image 2"):
        ResumableBatchSampler(sampler, 3)
    with pytest.raises(ValueError, match="needs image_keys"):
        MixedTaskSampler(sizes, tasks_per_image=2)


def test_tasks_per_image_settings_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="multiple of tasks_per_image 3"):
        helpers.datamodule(tmp_path, batch_size=4, tasks_per_image=3)
    with pytest.raises(ValueError, match=">= 1"):
        MixedTaskSampler({"a": 3}, tasks_per_image=0)


def test_a_batch_reads_each_image_once(synthetic, monkeypatch):
    dm = helpers.datamodule(synthetic)
    dm.setup("fit")
    dataset = dm.train_dataset
    paths = [sample.image_path for sample in dataset.flat]
    same = [i for i, path in enumerate(paths) if path == paths[0]][:2]  # two tasks about the first image
    other = next(i for i, path in enumerate(paths) if path != paths[0])
    indices = [*same, other]
    assert len(indices) == 3
    reads = []
    monkeypatch.setattr(dataset_module, "load_image", lambda path: reads.append(path) or load_image(path))
    items = dataset.__getitems__(indices)  # what DataLoader calls for a batch
    assert sorted(reads) == sorted({paths[i] for i in indices})
    for item, index in zip(items, indices, strict=True):
        assert item.image.index == index and torch.equal(
            item.image.pixel_values, dataset[index].image.pixel_values
        )


def test_samples_sharing_an_image_give_the_loss_and_gradients_of_one_copy_each(synthetic):
    """The batch encodes each image once (`image_index`); the step is the step on per-sample copies."""
    dm = helpers.datamodule(synthetic, tasks_per_image=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape[0] < batch["size"] == 4
    for row, index in zip(batch["image_index"], batch["index"], strict=True):
        expected = dm.processor.preprocess_image(load_image(dm.train_dataset.flat[index].image_path))
        assert torch.equal(batch["pixel_values"][row], expected)
    copies = {**batch, "pixel_values": batch["pixel_values"][batch["image_index"]], "image_index": None}
    module = helpers.module(config_overrides=NO_DROPOUT)
    module._build(dm.tokenizer)
    results = []
    for inputs in (batch, copies):
        module.zero_grad()
        loss, _ = module(inputs)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters()}))
    (shared_loss, shared_grads), (copies_loss, copies_grads) = results
    torch.testing.assert_close(shared_loss, copies_loss, rtol=1e-5, atol=1e-6)
    for name, grad in copies_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_task_warmup_draws_its_own_mix_first_then_the_configured_one():
    sizes = {"a": 50, "b": 50}
    # 25 warm-up samples over 2 ranks, epochs of 20: the warm-up spans epoch 0 and the first 5 draws of epoch 1.
    samplers = [
        MixedTaskSampler(
            sizes,
            {"a": 1.0, "b": 1.0},
            epoch_length=20,
            seed=0,
            rank=r,
            world_size=2,
            warmup_weights={"a": 1.0},
            warmup_length=25,
        )
        for r in (0, 1)
    ]
    streams = []
    for epoch in (0, 1, 2):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        streams.append(samplers[0].global_stream())
        assert sorted(list(samplers[0]) + list(samplers[1])) == sorted(streams[-1])
    assert all(i < 50 for i in streams[0] + streams[1][:5])
    later = streams[1][5:] + streams[2]
    assert sum(i >= 50 for i in later) > 10  # b is sampled again once the warm-up is over
    # Without a warm-up the stream is unchanged by the new code path (same generator draws).
    plain = MixedTaskSampler(sizes, {"a": 1.0, "b": 1.0}, epoch_length=20, seed=0)
    plain.set_epoch(2)
    assert plain.global_stream() == streams[2]


def test_invalid_weights_fail_clearly():
    with pytest.raises(ValueError, match="positive"):
        MixedTaskSampler({"a": 3}, {"a": 0.0})
    with pytest.raises(ValueError, match="without samples"):
        MixedTaskSampler({"a": 3}, {"b": 1.0})
    with pytest.raises(ValueError, match=r"not trained on: \['c'\]"):
        MixedTaskSampler({"a": 3, "b": 3}, warmup_weights={"c": 1.0}, warmup_length=4)
    with pytest.raises(ValueError, match="one positive"):
        MixedTaskSampler({"a": 3, "b": 3}, warmup_weights={"a": 0.0}, warmup_length=4)
    with pytest.raises(ValueError, match="needs warmup_weights"):
        MixedTaskSampler({"a": 3, "b": 3}, warmup_length=4)


# ---------------------------------------------------------------------------- freezing
@pytest.mark.parametrize("freeze", [{"vision": True}, {"vision_stages": 2}, {"language": True}])
def test_frozen_weights_stay_bit_identical_after_adamw_step(freeze):
    torch.manual_seed(0)
    model = Florence2(Florence2Config.preset("tiny", image_size=64))
    model.freeze(**freeze)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and trainable
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.5)
    # Even a hand-made gradient on a frozen weight must not move it: AdamW never sees frozen parameters.
    out = model(
        torch.randn(2, 3, 64, 64), torch.randint(5, 300, (2, 6)), labels=torch.randint(5, 300, (2, 5))
    )
    out.loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    moved = sum(not torch.equal(p, trainable[n]) for n, p in model.named_parameters() if n in trainable)
    assert moved > 0.9 * len(trainable)
    if freeze.get("vision_stages") == 2:
        assert all(not p.requires_grad for p in model.vision_tower.stem.parameters())
        assert all(p.requires_grad for p in model.vision_tower.stages[2].parameters())


def test_vision_lr_scale_slows_only_the_image_encoder():
    torch.manual_seed(0)
    model = Florence2(Florence2Config.preset("tiny", image_size=64))
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0, vision_lr_scale=0.1)
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len(set(map(id, grouped))) == len(list(model.parameters()))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = model(
        torch.randn(2, 3, 64, 64), torch.randint(5, 300, (2, 6)), labels=torch.randint(5, 300, (2, 5))
    )
    out.loss.backward()
    optimizer.step()
    # Adam's first step moves every parameter with a gradient by about its learning rate.
    steps = {n: (p - before[n]).abs().max().item() for n, p in model.named_parameters()}
    vision = [v for n, v in steps.items() if n.startswith("vision_tower.")]
    language = [v for n, v in steps.items() if n.startswith("language_model.")]
    assert max(vision) == pytest.approx(1e-4, rel=0.01)
    assert max(language) == pytest.approx(1e-3, rel=0.01)


def test_hold_encoders_steps_keeps_the_encoders_fixed_then_trains_them(synthetic, tmp_path):
    from f2lightning.training.optim import ENCODER_PREFIXES

    class Snapshots(L.Callback):
        def __init__(self):
            self.weights = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.weights.append({n: p.detach().clone() for n, p in pl_module.model.named_parameters()})

    snapshots = Snapshots()
    module = helpers.module(hold_encoders_steps=2, warmup_steps=1)
    before = {}

    class Initial(L.Callback):
        def on_train_start(self, trainer, pl_module):
            before.update({n: p.detach().clone() for n, p in pl_module.model.named_parameters()})

    helpers.trainer(tmp_path, max_steps=3, callbacks=[Initial(), snapshots]).fit(
        module, helpers.datamodule(synthetic)
    )
    encoder = [n for n in before if n.startswith(ENCODER_PREFIXES)]
    others = [n for n in before if not n.startswith(ENCODER_PREFIXES)]
    assert any(n.startswith("vision_tower.") for n in encoder) and any(
        ".encoder.layers." in n for n in encoder
    )
    assert "language_model.model.shared.weight" in others  # the shared embedding is the decoder's too
    first, second, third = snapshots.weights
    for name in encoder:
        assert torch.equal(first[name], before[name]) and torch.equal(second[name], before[name]), name
    assert sum(not torch.equal(third[n], before[n]) for n in encoder) > 0.9 * len(encoder)
    assert sum(not torch.equal(first[n], before[n]) for n in others) > 0.9 * len(others)


def test_bf16_mixed_runs_the_model_in_bf16_and_updates_fp32_weights(synthetic, tmp_path):
    """`trainer.precision: bf16-mixed` (the GPU configs'; on CPU too: 1.66x samples/s at base, see benchmarks/)."""
    module = helpers.module()
    dtypes = []
    before = {}

    class Watch(L.Callback):
        def on_train_start(self, trainer, pl_module):
            before.update({n: p.detach().clone() for n, p in pl_module.model.named_parameters()})
            for layer in (pl_module.model.vision_tower.stages[0], pl_module.model.language_model.lm_head):
                layer.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))

    helpers.trainer(tmp_path, max_steps=3, precision="bf16-mixed", callbacks=[Watch()]).fit(
        module, helpers.datamodule(synthetic)
    )
    assert dtypes and set(dtypes) == {torch.bfloat16}  # DaViT and the LM head ran under autocast
    weights = dict(module.model.named_parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in weights.values())
    assert sum(not torch.equal(p, before[n]) for n, p in weights.items()) > 0.9 * len(weights)
    assert module.nonfinite_steps == 0


def test_hold_encoders_for_the_whole_run_is_an_error(synthetic, tmp_path):
    with pytest.raises(ValueError, match="hold_encoders_steps=3 is not below the run's 3 optimizer steps"):
        helpers.trainer(tmp_path, max_steps=3).fit(
            helpers.module(hold_encoders_steps=3), helpers.datamodule(synthetic)
        )


def test_freeze_rejects_stage_out_of_range():
    model = Florence2(Florence2Config.preset("tiny", image_size=64))
    with pytest.raises(ValueError, match=r"0\.\.4"):
        model.freeze(vision_stages=5)


@pytest.mark.parametrize("option", ["activation_checkpointing", "compile"])
def test_speed_options_compute_the_same_loss_and_gradients(synthetic, option):
    """Options that change how the step is computed, not what: same loss and gradients as the plain module."""
    dm = helpers.datamodule(synthetic)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    torch._dynamo.reset()
    runs = []
    for kwargs in ({}, {option: True}):
        torch.manual_seed(0)
        module = helpers.module(config_overrides=NO_DROPOUT, **kwargs)
        module._build(dm.tokenizer)
        module.train()
        loss, _ = module(batch)
        loss.backward()
        runs.append(
            (module, loss.detach(), {n: p.grad for n, p in module.named_parameters() if p.requires_grad})
        )
    (plain, plain_loss, plain_grads), (fast, fast_loss, fast_grads) = runs
    if option == "compile":
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
        assert list(fast.state_dict()) == list(plain.state_dict())
    else:
        assert all(stage.grad_checkpointing for stage in fast.model.vision_tower.stages)
        assert fast.model.language_model.is_activation_checkpointing
    torch.testing.assert_close(fast_loss, plain_loss, rtol=1e-5, atol=1e-5)
    assert fast_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)


# ---------------------------------------------------------------------------- exact resume
class RecordIndices(L.Callback):
    def __init__(self):
        self.seen: list[list[int]] = []  # [epoch, *indices] per batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append([trainer.current_epoch, *batch["index"]])


class StopAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def _lr(trainer: L.Trainer) -> float:
    return trainer.optimizers[0].param_groups[0]["lr"]


def test_exact_resume_late_in_epochs_twice_past_two_epoch_ends(synthetic, tmp_path, recwarn):
    # 24 samples in runs of two, batch 4: 6 batches an epoch. Interrupted at step 5 (one batch before the end of
    # epoch 0) and at step 11 (one before the end of epoch 1), the run must still train epochs of 6 batches, each
    # batch once, and end where the uninterrupted run ends.
    steps, stops = 14, (5, 11)

    def data():  # the captions-first warm-up runs past the first resume point; same-image runs of two
        return helpers.datamodule(
            synthetic,
            epoch_length=24,
            warmup_task_weights={"<CAPTION>": 1},
            warmup_task_steps=6,
            tasks_per_image=2,
        )

    L.seed_everything(0)
    straight_lit, straight_seen = helpers.module(), RecordIndices()
    straight = helpers.trainer(tmp_path / "a", steps, callbacks=[straight_seen])
    straight.fit(straight_lit, data())
    assert [batch[0] for batch in straight_seen.seen] == [0] * 6 + [1] * 6 + [
        2
    ] * 2  # the epoch of each batch

    seen, saved = [], None
    for attempt, stop in enumerate((*stops, steps)):
        L.seed_everything(
            123 * attempt
        )  # the same initial weights; resuming must not depend on the RNG state
        lit, recorder = helpers.module(), RecordIndices()
        checkpoint = ModelCheckpoint(
            dirpath=tmp_path / f"ckpt{attempt}", every_n_train_steps=stop, save_top_k=-1
        )
        run = helpers.trainer(
            tmp_path / f"run{attempt}",
            steps,
            callbacks=[checkpoint, recorder, StopAt(stop)],
            enable_checkpointing=True,
        )
        run.fit(lit, data(), ckpt_path=saved)
        assert run.global_step == stop
        seen += recorder.seen
        saved = next((tmp_path / f"ckpt{attempt}").glob(f"*step={stop}.ckpt"))

    assert seen == straight_seen.seen
    assert not [w for w in recwarn if "not resumable" in str(w.message)]  # the datamodule resumes the loader
    assert _lr(run) == pytest.approx(_lr(straight), rel=1e-9)
    for (name, a), b in zip(
        straight_lit.model.state_dict().items(), lit.model.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name


# ---------------------------------------------------------------------------- distributed
def run_training_script(synthetic, *args: str) -> None:
    """`tests.helpers.training` in its own process(es), one thread per process (DDP ranks share the cores)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "tests.helpers.training", "--data", str(synthetic), *args],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=600,
    )


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(synthetic, tmp_path):
    run_training_script(
        synthetic, "--steps", "4", "--devices", "2", "--batch-size", "2", "--out", str(tmp_path / "ddp.pt")
    )
    run_training_script(
        synthetic, "--steps", "4", "--devices", "1", "--batch-size", "4", "--out", str(tmp_path / "single.pt")
    )
    rank0 = json.loads((tmp_path / "ddp.pt.rank0.json").read_text())
    rank1 = json.loads((tmp_path / "ddp.pt.rank1.json").read_text())
    single = json.loads((tmp_path / "single.pt.rank0.json").read_text())
    # Rank r takes every other position of the global stream: together they see exactly the single
    # process's global batches, and no stream position twice.
    assert [sorted(rank0[i : i + 2] + rank1[i : i + 2]) for i in range(0, len(rank0), 2)] == [
        sorted(single[i : i + 4]) for i in range(0, len(single), 4)
    ]
    ddp, one = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "single.pt")
    dm = helpers.datamodule(synthetic)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    losses = {}
    for name, state in (("ddp", ddp), ("single", one)):
        lit = helpers.module()
        lit._build(dm.tokenizer)
        lit.model.load_state_dict(state)
        lit.model.eval()
        with torch.no_grad():
            losses[name] = float(lit(batch)[0])
    assert losses["ddp"] == pytest.approx(losses["single"], rel=2e-2)


@pytest.mark.slow
def test_a_gradient_non_finite_on_one_rank_only_skips_the_step_on_every_rank(synthetic, tmp_path):
    # As under FSDP, where each rank holds a different shard of the gradients.
    run_training_script(
        synthetic,
        "--steps",
        "3",
        "--devices",
        "2",
        "--batch-size",
        "2",
        "--poison-rank",
        "1",
        "--out",
        str(tmp_path / "ddp.pt"),
    )
    rank0, rank1 = (torch.load(tmp_path / f"ddp.pt.rank{rank}.pt") for rank in (0, 1))
    assert rank0["nonfinite_steps"] == rank1["nonfinite_steps"] == 1
    for name, weight in rank0["state"].items():
        assert torch.equal(weight, rank1["state"][name]), f"{name}: the ranks' replicas diverged"


def test_the_cli_tests_a_model_and_predicts_images_as_f2lightning_predict_does(synthetic, tmp_path):
    from f2lightning.data.skips import SkipReport
    from f2lightning.inference.generation import GenerationSettings
    from f2lightning.inference.predict import build_requests, collect_images, predict
    from f2lightning.training.cli import main

    args = [
        f"--data.synthetic_dir={synthetic}", "--data.image_size=64", "--data.tasks=[<CAPTION>, <OD>]",
        "--data.val_samples_per_task=2", f"--data.test_files=[{synthetic}/val.jsonl]", "--data.num_workers=0",
        "--model.config_overrides={text: {max_position_embeddings: 512}}", "--model.val_max_new_tokens=8",
        "--model.log_predictions=1", "--trainer.accelerator=cpu", "--trainer.logger=false",
        "--trainer.limit_test_batches=2", f"--trainer.default_root_dir={tmp_path}", "--data.max_target_length=256",
    ]  # fmt: skip
    cli = main(["test", *args])
    metrics = cli.trainer.callback_metrics
    assert {"test/loss", "test/CAPTION/exact_match"} <= set(metrics)
    assert all(torch.isfinite(metrics[name]) for name in ("test/loss",))

    images = sorted((synthetic / "images").glob("*.png"))[:3]
    predict_args = [f"--data.predict_files=[{images[0]}, {images[1]}, {images[2]}]",
                    "--data.predict_tasks=[<OD>, caption]", "--data.val_batch_size=2", "--model.num_beams=2"]  # fmt: skip
    cli = main(["predict", *args, *predict_args])
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and {line["task"] for line in lines} == {"<OD>", "<CAPTION>"}
    # The Lightning loop answers exactly as the command does with the same model and settings.
    requests = build_requests(collect_images(images, SkipReport()), ["<OD>", "<CAPTION>"])
    settings = GenerationSettings(batch_size=2, num_beams=2, max_new_tokens=8, num_workers=0, progress=False)
    predict(cli.model.model, cli.model.processor, requests, tmp_path / "command.jsonl", settings)
    command = {
        json.loads(line)["key"]: json.loads(line)
        for line in (tmp_path / "command.jsonl").read_text().splitlines()
    }
    for line in lines:  # the result follows from the text; scores agree to float32 rounding of other batches
        assert line["text"] == command[line["key"]]["text"]
        assert line["score"] == pytest.approx(command[line["key"]]["score"], rel=1e-5)
    report = json.loads((tmp_path / "predictions_report.json").read_text())
    assert report["written"] == 6 and report["skipped_images"]["total"] == 0


TINY_RUN = [
    "--trainer.accelerator=cpu", "--trainer.max_steps=2", "--trainer.logger=false",
    "--trainer.enable_checkpointing=false", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
    "--data.image_size=64", "--data.batch_size=2", "--data.num_workers=0", "--data.max_target_length=256",
    "--data.tasks=[<CAPTION>]", "--model.config_overrides={text: {max_position_embeddings: 512}}",
    "--model.warmup_steps=1",
]  # fmt: skip


def test_train_py_without_a_sub_command_fits(synthetic, tmp_path):
    from f2lightning.training.cli import main

    cli = main([f"--data.synthetic_dir={synthetic}", f"--trainer.default_root_dir={tmp_path}", *TINY_RUN])
    assert cli.subcommand == "fit" and cli.trainer.global_step == 2


def test_lightning_run_model_trains_on_two_cpu_processes(synthetic, tmp_path):
    # The user's launch habit, as typed: `lightning run model train.py --trainer.devices=2 ...` (no sub-command).
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    lightning = Path(sys.executable).parent / "lightning"
    command = [str(lightning), "run", "model", f"--main-port={port}", "train.py", "--trainer.devices=2",
               "--trainer.strategy=ddp", f"--data.synthetic_dir={synthetic}", f"--trainer.default_root_dir={tmp_path}",
               *TINY_RUN]  # fmt: skip
    repo = Path(__file__).resolve().parents[1]
    ran = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    log = ran.stdout + ran.stderr
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    assert "`max_steps=2` reached" in log
