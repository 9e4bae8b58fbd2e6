"""The streaming path: litdata shards written here, mixed by weight, split by rank, resumed exactly."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections import Counter

import lightning as L
import pytest
import torch

pytest.importorskip("litdata")

from f2lightning.cli import main as cli_main
from f2lightning.data.datamodule import Florence2DataModule
from f2lightning.data.dataset import Collator, MultitaskDataset
from f2lightning.data.expand import expand
from f2lightning.data.records import read_records
from f2lightning.data.schema import BadRecordError
from f2lightning.data.skips import SkipReport
from f2lightning.data.streaming import ShardError, build_stream, streaming_loader, write_shards
from f2lightning.data.synthetic import SyntheticConfig, make_synthetic
from f2lightning.processor import Florence2Processor

TASKS = ["<CAPTION>", "<OD>", "<VQA>"]
SCENE = SyntheticConfig(image_size=96, font_size=12)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """20 synthetic images sharded per task into small chunks, so ranks and workers get several each."""
    root = tmp_path_factory.mktemp("streaming")
    records = make_synthetic(root / "data", 20, config=SCENE, val_fraction=0)["train"]
    counts = write_shards([records], str(root / "shards"), tasks=TASKS, chunk_bytes="4KB")
    return {"records": records, "shards": str(root / "shards"), "counts": counts, "root": root}


@pytest.fixture(scope="module")
def by_image(corpus) -> str:
    """The same 20 images sharded by image (one item each, all its samples), through the command line."""
    out = corpus["root"] / "by_image"
    argv = [
        "shard",
        str(corpus["records"]),
        "-o",
        str(out),
        "--by-image",
        "--tasks",
        *TASKS,
        "--chunk-bytes",
        "4KB",
    ]
    assert cli_main([*argv, "--workers", "1"]) == 0
    return str(out)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return Florence2Processor(tokenizer, image_size=32)


def samples_of(loader) -> list[tuple[str, int]]:
    return [pair for batch in loader for pair in zip(batch["task"], batch["index"])]


def test_batches_look_like_the_map_style_path_and_cover_every_sample(corpus, processor) -> None:
    expected = [s for r in read_records(corpus["records"]) for s in expand(r, TASKS)]
    assert corpus["counts"] == dict(Counter(s.task for s in expected))

    batches = list(streaming_loader(build_stream(corpus["shards"], processor), processor, 4, 0))
    seen = Counter((task, target) for b in batches for task, target in zip(b["task"], b["target"]))
    assert seen == Counter((s.task, s.target) for s in expected)  # every sample exactly once per epoch

    mapped = MultitaskDataset({"<OD>": [s for s in expected if s.task == "<OD>"]}, processor)
    reference = Collator(processor)([mapped[i] for i in range(4)])
    streamed = batches[0]
    assert streamed.keys() == reference.keys()
    for key, value in reference.items():
        if isinstance(value, torch.Tensor):
            assert streamed[key].dtype == value.dtype and streamed[key].dim() == value.dim(), key
    # One row per distinct image: a shard keeps an image's samples together, so they often share one.
    assert streamed["pixel_values"].shape[1:] == reference["pixel_values"].shape[1:]
    assert streamed["pixel_values"].shape[0] == len(set(streamed["image_index"].tolist()))
    assert all(size == (96, 96) for size in streamed["image_size"])


def test_task_frequencies_follow_the_weights(corpus, processor) -> None:
    stream = build_stream(corpus["shards"], processor, task_weights={"<CAPTION>": 1.0, "vqa": 3.0})
    tasks = Counter(task for task, _ in samples_of(streaming_loader(stream, processor, 8, 0)))
    assert set(tasks) == {"<CAPTION>", "<VQA>"}
    # The weighted epoch ends when the 20 captions run out: ~80 draws, so 3 standard deviations is ~0.15.
    assert tasks["<VQA>"] / tasks.total() == pytest.approx(0.75, abs=0.15)


def test_two_ranks_see_disjoint_samples(corpus, processor, monkeypatch) -> None:
    per_rank, weighted = [], []
    for rank in (0, 1):
        # What litdata reads when torch.distributed is not initialised (Lightning's launchers set them too).
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("GLOBAL_RANK", str(rank))
        per_rank.append(
            samples_of(streaming_loader(build_stream(corpus["shards"], processor), processor, 4, 0))
        )
        stream = build_stream(corpus["shards"], processor, task_weights={"<CAPTION>": 1, "<OD>": 2})
        weighted.append(samples_of(streaming_loader(stream, processor, 4, 0)))
    assert len(weighted[0]) == len(weighted[1]) and not set(weighted[0]) & set(weighted[1])
    first, second = (set(samples) for samples in per_rank)
    assert len(first) == len(per_rank[0]) and len(second) == len(per_rank[1])
    assert first and second and not first & second
    assert len(per_rank[0]) == len(per_rank[1])  # equal lengths: DDP ranks step together
    assert len(first | second) >= 0.8 * sum(corpus["counts"].values())  # only the tail is dropped


def test_state_dict_resumes_with_the_same_next_samples(corpus, processor) -> None:
    def loader():
        stream = build_stream(corpus["shards"], processor, task_weights={"<OD>": 1, "<VQA>": 1}, seed=3)
        return streaming_loader(stream, processor, batch_size=4, num_workers=2)

    first = loader()
    batches = iter(first)
    for _ in range(3):
        next(batches)
    state = first.state_dict()
    expected = [list(zip(b["task"], b["index"])) for b in (next(batches), next(batches))]
    del batches

    resumed = loader()
    buffer = io.BytesIO()
    torch.save(state, buffer)  # as in a checkpoint (JSON would turn the worker ids into strings)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    batches = iter(resumed)
    assert [list(zip(b["task"], b["index"])) for b in (next(batches), next(batches))] == expected


class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[list[str]] = []
        self.images: list[int] = []  # rows of pixel_values per batch

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["target"])
        self.images.append(len(batch["pixel_values"]))
        return self.weight * batch["pixel_values"].mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_datamodule_streams_and_resumes_mid_epoch_through_the_checkpoint(corpus, tokenizer, tmp_path) -> None:
    tokenizer.save_pretrained(tmp_path / "tokenizer")

    def fit(steps: int, ckpt_path: str | None = None, callbacks=()) -> list[list[str]]:
        data = Florence2DataModule(
            streaming_dir=corpus["shards"], tokenizer=str(tmp_path / "tokenizer"), image_size=32,
            tasks=["<CAPTION>", "<OD>"], batch_size=4, num_workers=0,
        )  # fmt: skip
        model = _Recorder()
        trainer = L.Trainer(
            max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=bool(callbacks), callbacks=list(callbacks),
            default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
        return model.seen

    save = L.pytorch.callbacks.ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    uninterrupted = fit(6, callbacks=[save])
    assert len(uninterrupted) == 6
    checkpoint = next((tmp_path / "ckpt").glob("*step=3.ckpt"))
    assert fit(6, ckpt_path=str(checkpoint)) == uninterrupted[3:]


def test_unreadable_images_are_counted_when_sharding_and_when_streaming(tmp_path, processor, capsys) -> None:
    records = make_synthetic(tmp_path / "data", 4, config=SCENE, val_fraction=0)["train"]
    images = sorted((tmp_path / "data" / "images").iterdir())
    images[0].write_bytes(images[0].read_bytes()[:100])  # header intact: only decoding finds it
    images[1].write_bytes(b"not an image")  # found by the shard command
    images[2].unlink()  # found by the shard command

    report_path = tmp_path / "skipped.json"
    argv = ["shard", str(records), "-o", str(tmp_path / "shards"), "--tasks", "<CAPTION>", "--workers", "1"]
    assert cli_main([*argv, "--report", str(report_path)]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["dropped"] == {"bad_image": 1, "missing_image": 1}

    loader = streaming_loader(build_stream(str(tmp_path / "shards"), processor), processor, 2, 0)
    batches = list(loader)
    skipped = [reason for b in batches for reason in b["skipped"]]
    assert len(skipped) == 1 and images[0].name in skipped[0]["message"]
    assert sum(b["size"] for b in batches) == 1

    assert cli_main([*argv, "--by-image", "-o", str(tmp_path / "by_image")]) == 0
    stream = build_stream(str(tmp_path / "by_image"), processor, tasks_per_image=2)
    batches = list(streaming_loader(stream, processor, 2, 0))
    skipped = [reason for b in batches for reason in b["skipped"]]
    assert (
        len(skipped) == 1 and images[0].name in skipped[0]["message"]
    )  # the bad image's run is one counted skip
    assert sum(b["size"] for b in batches) == 2

    with pytest.raises(BadRecordError, match="does not exist"):
        write_shards([records], str(tmp_path / "strict"), on_bad_sample="raise", report=SkipReport())


# ---------------------------------------------------------------------------------------- by-image shards
def test_by_image_runs_ask_about_one_image_and_cover_every_image_once(corpus, by_image, processor) -> None:
    samples_of_image = {
        r.image: {(s.task, s.prompt, s.target) for s in expand(r, TASKS)}
        for r in read_records(corpus["records"])
    }
    stream = build_stream(by_image, processor, tasks_per_image=3)
    assert len(stream) == 20
    for position in range(len(stream)):
        run = stream[position]
        assert len(run) == 3 and len({sample.image.image_key for sample in run}) == 1
        assert all(sample.image is run[0].image for sample in run)  # decoded once
        drawn = [(sample.task, sample.prompt, sample.target) for sample in run]
        assert set(drawn) <= samples_of_image[run[0].image.image_key]
        # Another sample of the image before any repeats (every image has more than 3 of these tasks).
        assert len(set(drawn)) == 3

    batches = list(streaming_loader(build_stream(by_image, processor, tasks_per_image=2), processor, 4, 0))
    assert [b["image_index"].tolist() for b in batches] == [[0, 0, 1, 1]] * 10
    assert all(len(b["pixel_values"]) == 2 for b in batches)
    images = Counter(index for b in batches for index in b["index"])
    assert images == dict.fromkeys(range(20), 2)  # every image once per epoch, a run of two samples each


def test_by_image_task_draws_follow_the_weights(by_image, processor) -> None:
    stream = build_stream(by_image, processor, task_weights={"<CAPTION>": 1.0, "vqa": 3.0}, tasks_per_image=4)
    tasks = Counter(task for b in streaming_loader(stream, processor, 8, 0) for task in b["task"])
    assert set(tasks) == {"<CAPTION>", "<VQA>"}
    # 80 draws (every synthetic image has captions and questions): 3 standard deviations is ~0.15.
    assert tasks["<VQA>"] / tasks.total() == pytest.approx(0.75, abs=0.15)
    only = build_stream(by_image, processor, tasks=["<OD>"], tasks_per_image=2)
    assert {task for b in streaming_loader(only, processor, 4, 0) for task in b["task"]} == {"<OD>"}


def test_by_image_runs_are_seeded_split_by_rank_and_resume_exactly(by_image, processor, monkeypatch) -> None:
    def loader(seed: int = 3, workers: int = 0):
        stream = build_stream(by_image, processor, seed=seed, tasks_per_image=2)
        return streaming_loader(stream, processor, batch_size=4, num_workers=workers)

    def drawn(batches) -> list[list[tuple[str, str]]]:
        return [list(zip(b["task"], b["target"])) for b in batches]

    def samples(batches) -> Counter:
        return Counter(pair for batch in batches for pair in batch)

    epoch = drawn(loader())
    assert drawn(loader()) == epoch
    assert samples(drawn(loader(seed=4))) != samples(epoch)  # other draws, not just another order
    repeated = loader()
    first, second = drawn(repeated), drawn(repeated)
    assert first == epoch
    # The next epoch draws anew: not just the same runs in another order.
    assert samples(second) != samples(first)

    first = loader(workers=2)
    batches = iter(first)
    for _ in range(2):
        next(batches)
    state = first.state_dict()
    expected = drawn([next(batches), next(batches)])
    del batches
    resumed = loader(workers=2)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    batches = iter(resumed)
    assert drawn([next(batches), next(batches)]) == expected

    per_rank = []
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("GLOBAL_RANK", str(rank))
        per_rank.append([index for b in loader() for index in b["index"]])
    assert len(per_rank[0]) == len(per_rank[1]) > 0 and not set(per_rank[0]) & set(per_rank[1])


def test_datamodule_streams_runs_from_by_image_shards_only(
    corpus, by_image, processor, tokenizer, tmp_path
) -> None:
    tokenizer.save_pretrained(tmp_path / "tokenizer")

    def data(streaming_dir: str) -> Florence2DataModule:
        return Florence2DataModule(
            streaming_dir=streaming_dir, tokenizer=str(tmp_path / "tokenizer"), image_size=32, tasks=TASKS,
            batch_size=4, num_workers=0, tasks_per_image=2,
        )  # fmt: skip

    model = _Recorder()
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data(by_image))
    assert model.images == [2, 2, 2] and all(len(targets) == 4 for targets in model.seen)

    per_task = data(corpus["shards"])
    per_task.setup("fit")
    with pytest.raises(FileNotFoundError, match="shard --by-image"):
        per_task.train_dataloader()
    with pytest.raises(FileNotFoundError, match="written --by-image"):
        build_stream(by_image, processor)  # one task per sample needs the per-task shards


# ---------------------------------------------------------------------------- shards that must not be trusted
class _WritesAMarker:
    """Pickles to a call of `open(marker, "w")`: loading it creates the file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def _item_with_pickled_field(marker: str):
    return {
        "image": b"x",
        "image_name": b"a.png",
        "image_size": (1, 1),
        "prompt": "p",
        "target": "t",
        "task": "<OD>",
        "payload": _WritesAMarker(marker),
    }


def test_a_shard_declaring_a_pickle_field_is_refused_before_its_code_runs(tmp_path, processor) -> None:
    from litdata import optimize

    marker = tmp_path / "ran"
    optimize(fn=_item_with_pickled_field, inputs=[str(marker)], output_dir=str(tmp_path / "object_detection"),
             chunk_bytes="4KB",
             num_workers=1, start_method="fork", verbose=False)  # fmt: skip
    assert (
        "pickle"
        in json.loads((tmp_path / "object_detection" / "index.json").read_text())["config"]["data_format"]
    )
    with pytest.raises(ShardError, match=r"object_detection: a field is declared as 'pickle'"):
        list(streaming_loader(build_stream(str(tmp_path), processor, tasks=["<OD>"]), processor, 1, 0))
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["empty chunk", "cut chunk", "missing chunk", "garbled index"])
def test_a_damaged_shard_is_an_error_naming_the_file(corpus, tmp_path, processor, damage) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(corpus["shards"], shards)
    task = shards / "caption"
    chunk = sorted(task.glob("chunk-*.bin"))[1]
    if damage == "empty chunk":
        chunk.write_bytes(b"")
    elif damage == "cut chunk":
        chunk.write_bytes(chunk.read_bytes()[:-7])
    elif damage == "missing chunk":
        chunk.unlink()
    else:
        (task / "index.json").write_text('{"chunks": [')
    named = task / "index.json" if damage == "garbled index" else chunk
    with pytest.raises(ShardError, match=re.escape(str(named))):
        build_stream(str(shards), processor, tasks=["<CAPTION>"])


def test_an_item_whose_bytes_do_not_decode_is_an_error_naming_the_shard(corpus, tmp_path, processor) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(corpus["shards"], shards)
    chunk = sorted((shards / "caption").glob("chunk-*.bin"))[0]
    data = bytearray(chunk.read_bytes())
    data[4:12] = b"\xff" * 8  # the item offsets: same size, nonsense positions
    chunk.write_bytes(bytes(data))
    with pytest.raises(
        ShardError, match=re.escape(str(shards / "caption")) + r", chunk \d+: item \d+ cannot be read"
    ):
        list(streaming_loader(build_stream(str(shards), processor, tasks=["<CAPTION>"]), processor, 4, 0))
