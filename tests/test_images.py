"""Image stores (imgxfer.data.images): streamed files read the same as files kept in memory,
DataLoader workers hand out the batches asked for in order, the run reads files at its
encoder's size, and a file that breaks during a run is one sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_RUN, tiny_bars
from PIL import Image

from imgxfer.cli.app import cli
from imgxfer.components.datasets.folder import folder
from imgxfer.core.errors import UserError
from imgxfer.data import images as store_module
from imgxfer.data.features import feature_cache_key
from imgxfer.data.files import FileImages
from imgxfer.data.images import ConcatImages, TensorImages, indexed_batches
from imgxfer.nn.nets import SmallConvNet


@pytest.fixture
def workers():
    """Restore the process-wide worker count after a test changes it."""
    yield store_module.set_workers
    store_module.set_workers(None)


def bars_folder(root, n_per_class=6, size=24, jpeg=False):
    data = tiny_bars("bars", n_per_class, size=size, seed=5)
    for i, (image, y) in enumerate(zip(data.images.tensor(), data.labels.tolist(), strict=True)):
        path = root / data.class_names[y] / f"{i:03d}.{'jpg' if jpeg else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image[0].numpy() * 255).astype(np.uint8)).save(path)
    return root


def test_streamed_files_read_as_files_kept_in_memory(tmp_path):
    root = bars_folder(tmp_path / "bars")
    streamed = folder(str(root), stream="always").images.at_size(16).settle()
    kept = folder(str(root), stream="never").images.at_size(16).settle()
    assert isinstance(streamed, FileImages) and isinstance(kept, TensorImages)
    assert kept.data.dtype == torch.uint8  # 8-bit files: a quarter of float32's memory
    assert streamed.shape == kept.shape == (18, 1, 16, 16)
    assert torch.equal(streamed[:], kept[:])
    rows = torch.tensor([5, 0, 17])
    assert torch.equal(streamed[rows], kept[rows]) and torch.equal(streamed[3], kept[3])
    small = folder(str(root)).images.at_size(16).settle()  # auto: small enough for memory
    assert isinstance(small, TensorImages)


def test_files_are_read_at_the_size_the_run_asks_unless_the_user_chose(tmp_path):
    root = bars_folder(tmp_path / "bars")
    assert folder(str(root)).images.shape[-1] == 32  # outside a run
    assert folder(str(root)).images.at_size(48).shape == (18, 1, 48, 48)
    assert folder(str(root), size=20).images.at_size(48).shape == (18, 1, 20, 20)


@pytest.mark.parametrize("n_workers", [0, 1])
def test_batches_come_in_the_order_asked_with_or_without_workers(tmp_path, workers, n_workers):
    workers(n_workers)
    store = folder(str(bars_folder(tmp_path / "bars")), stream="always").images
    asked = [torch.tensor([3, 1]), torch.tensor([0, 17, 2]), torch.tensor([9])]
    got = list(indexed_batches(store, iter(asked)))
    assert [idx.tolist() for idx, _ in got] == [a.tolist() for a in asked]
    for idx, batch in got:
        assert torch.equal(batch, store[idx])
    assert torch.equal(torch.cat(list(store.chunks(4))), store[:])


@pytest.mark.parametrize("n_workers", [0, 1])
def test_a_file_broken_during_a_run_is_one_sentence(tmp_path, workers, n_workers):
    workers(n_workers)
    root = bars_folder(tmp_path / "bars")
    store = folder(str(root), stream="always").images
    victim = sorted((root / "vertical").iterdir())[0]
    victim.write_bytes(b"not an image any more")
    with pytest.raises(UserError, match=r"cannot read image 'vertical/.*was it changed"):
        list(store.chunks(5))


def test_concatenated_stores_index_like_one_tensor():
    a, b = tiny_bars("a", 3).images, tiny_bars("b", 2, seed=1).images
    joined, whole = ConcatImages([a, b]), torch.cat([a[:], b[:]])
    rows = torch.tensor([14, 0, 9, 10, 3, 13])
    assert len(joined) == 15 and torch.equal(joined[rows], whole[rows])
    assert torch.equal(joined.subset(rows.tolist())[:], whole[rows])
    assert torch.equal(joined[:], whole)


def test_the_feature_cache_key_follows_a_file_change(tmp_path):
    root = bars_folder(tmp_path / "bars")
    encoder = SmallConvNet(4, 16, 1, 0)
    before = feature_cache_key(encoder, folder(str(root), stream="always").images, "cpu")
    assert before == feature_cache_key(encoder, folder(str(root), stream="always").images, "cpu")
    victim = sorted((root / "dot").iterdir())[0]
    Image.new("L", (24, 24), 255).save(victim)
    assert before != feature_cache_key(encoder, folder(str(root), stream="always").images, "cpu")


def test_a_bad_stream_or_worker_count_is_one_sentence(tmp_path):
    with pytest.raises(UserError, match="option stream must be one of"):
        folder(str(bars_folder(tmp_path / "bars")), stream="sometimes")
    with pytest.raises(UserError, match="--workers must be 0"):
        store_module.set_workers(-3)
    result = CliRunner().invoke(cli, ["run", "--workers", "-2", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "workers must be 0 or more" in result.output
    assert "Traceback" not in result.output


def test_too_many_workers_are_refused_in_one_sentence(workers, monkeypatch):
    """Issue 29, item 15: --workers 100000 is refused before anything starts (4 per core,
    and fewer under a process limit), not an 'Aborted!' with a traceback midway."""
    import resource

    monkeypatch.setattr(store_module, "usable_cores", lambda: 2)
    monkeypatch.setattr(store_module, "_process_room", lambda: None)
    workers(8)
    with pytest.raises(UserError, match=r"^--workers 100000 is more than this machine allows "
                                        r"\(at most 8: 4 per usable core, 2 here\); use fewer"):
        workers(100000)
    # Under `ulimit -u 60` with 20 tasks of the user running: room for 10 workers.
    monkeypatch.undo()
    monkeypatch.setattr(store_module, "usable_cores", lambda: 16)
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (60, 60))
    monkeypatch.setattr(store_module.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(store_module, "_user_tasks", lambda: 20)
    workers(10)
    with pytest.raises(UserError, match=r"at most 10: what the user's process limit"):
        workers(11)
    assert store_module.workers() == 10


def test_workers_that_cannot_start_are_one_sentence(tmp_path, workers, monkeypatch):
    """When the machine has no process to spare at the time, the fork server's connection
    closes (EOFError, which click reports as 'Aborted!'): one sentence instead."""
    class NoForks(store_module.DataLoader):
        def __iter__(self):
            raise EOFError

    workers(2)
    monkeypatch.setattr(store_module, "DataLoader", NoForks)
    store = folder(str(bars_folder(tmp_path / "bars")), stream="always").images
    with pytest.raises(UserError, match=r"could not start 2 worker processes to decode images "
                                        r"\(EOFError\); use fewer --workers"):
        list(store.chunks(4))


def test_a_streamed_run_gives_the_metrics_of_an_in_memory_run(host, tmp_path):
    """The same folders streamed through a worker and kept in memory: the same pixels, so
    the same trained models and metrics, to the last digit."""
    src = bars_folder(tmp_path / "src", n_per_class=12, size=16)
    tgt = bars_folder(tmp_path / "tgt", n_per_class=10, size=16, jpeg=True)
    args = [a for a in TINY_RUN]
    args[args.index("--source") + 1] = f"folder:{src}"
    args[args.index("--target") + 1] = f"folder:{tgt}"
    metrics = []
    for stream in ("always", "never"):
        result = CliRunner().invoke(cli, [
            "run", *args, "--generator", "none", "--adapter", "dann", "--workers", "1",
            "--source-opt", f"stream={stream}", "--target-opt", f"stream={stream}",
            "--out", str(tmp_path / f"runs-{stream}"), "--json"])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.output[result.output.index("{"):])
        metrics.append({k: payload[k] for k in ("target", "encoder")})
    assert metrics[0] == metrics[1]
