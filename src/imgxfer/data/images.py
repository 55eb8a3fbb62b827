"""Image stores: what :attr:`imgxfer.data.dataset.ImageDataset.images` holds.

A store is a sequence of images that hands out float32 batches ``[B, C, H, W]`` in
[0, 1] by index (``store[index]``), whether the images are in memory or in files:

- :class:`TensorImages`: a tensor in memory (float, or uint8 for 8-bit images, a quarter
  of the bytes), optionally resized per batch from the stored resolution;
- :class:`FileImages`: image files, decoded and resized when a batch is asked for
  (``folder:`` and ``csv:`` datasets too large to keep in memory), by
  ``torch.utils.data.DataLoader`` worker processes (:func:`set_workers`,
  ``imgxfer run --workers``) when batches are drawn through :meth:`ImageStore.batches`;
- :class:`ConcatImages`: several stores one after another (the target pool).

Everything that goes through all images of a set (encoding, prediction, AdaBN,
captions) iterates :meth:`ImageStore.chunks`, so memory does not grow with the dataset.
Components that take a plain tensor (generators, captioners) get one from
:meth:`ImageStore.tensor` or chunk by chunk.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from imgxfer.core.errors import UserError

Index = torch.Tensor | Sequence[int] | slice
CHUNK = 256  # images per batch when a whole set is read in order

_workers: int | None = None  # None: default_workers()


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers() -> int:
    """DataLoader workers when nobody said: the cores this process may use, minus one for
    the training process itself, at most 4 (decoding 224-px JPEGs keeps up with a CPU
    training step with 1-2 workers per training core; more only costs memory)."""
    return max(1, min(4, usable_cores() - 1))


# Workers per usable core at most: a decoding worker beyond that only waits for a core,
# holding a process and its memory the while.
WORKERS_PER_CORE = 4
# Tasks one worker counts against RLIMIT_NPROC (Linux counts threads): its process, torch's
# threads and the queue's feeder thread, with room to spare.
TASKS_PER_WORKER = 4


def _user_tasks() -> int:
    """Processes and threads of this user now (what RLIMIT_NPROC counts), from /proc; 0
    where it cannot be read."""
    uid, tasks = os.getuid(), 0
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return 0
    for entry in entries:
        try:
            with open(f"/proc/{entry}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            tasks += int(fields.get("Threads", "1").strip())
    return tasks


def _process_room() -> int | None:
    """Workers the user's process limit (``ulimit -u``) leaves room for; None without a
    limit (or as root, whom it does not bind)."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft == resource.RLIM_INFINITY or os.geteuid() == 0:
        return None
    return max(0, (soft - _user_tasks()) // TASKS_PER_WORKER)


def max_workers() -> tuple[int, str]:
    """The most decoding workers worth starting here, and what sets that bound."""
    cap = WORKERS_PER_CORE * usable_cores()
    why = f"{WORKERS_PER_CORE} per usable core, {usable_cores()} here"
    room = _process_room()
    if room is not None and room < cap:
        return room, "what the user's process limit (ulimit -u) still leaves room for"
    return cap, why


def set_workers(n: int | None) -> None:
    """Worker processes that decode streamed images (0: decode in this process; None: the
    default, :func:`default_workers`). More than :func:`max_workers` is refused: past
    the process limit, starting them fails midway through a run."""
    global _workers
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise UserError(f"--workers must be 0 (decode in the main process) or more, got {n!r}.")
    if n is not None and n > 0:
        most, why = max_workers()
        if n > most:
            raise UserError(f"--workers {n} is more than this machine allows (at most {most}: "
                            f"{why}); use fewer, or 0 to decode in the main process.")
    _workers = n


def workers() -> int:
    return default_workers() if _workers is None else _workers


def _rows(index: Index, n: int) -> list[int]:
    if isinstance(index, slice):
        return list(range(n))[index]
    if isinstance(index, torch.Tensor):
        if index.dtype == torch.bool:
            index = torch.nonzero(index).flatten()
        return index.reshape(-1).tolist()
    return [int(i) for i in index]


class ImageStore:
    """The store interface; subclasses implement ``__len__``, ``shape``, ``load`` (a list
    of rows -> float batch), ``subset``, ``fingerprint`` and optionally ``at_size``."""

    streamed = False  # True: reading a batch decodes files (worth worker processes)

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, C, H, W), as a tensor's shape would read."""
        raise NotImplementedError

    @property
    def channels(self) -> int:
        return self.shape[1]

    def load(self, rows: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def subset(self, rows: list[int]) -> ImageStore:
        raise NotImplementedError

    def fingerprint(self) -> bytes:
        """Bytes that change when any image would read differently (the feature cache key)."""
        raise NotImplementedError

    def at_size(self, size: int) -> ImageStore:
        """The same images read as ``size`` squares, where the store can read them at any
        size (files, stored originals); a store of fixed-size images returns itself."""
        return self

    def settle(self) -> ImageStore:
        """The store to train from once its size is chosen: files small enough to keep
        in memory are decoded into a :class:`TensorImages` (:class:`FileImages`)."""
        return self

    def __getitem__(self, index: Index | int) -> torch.Tensor:
        """A float batch ``[B, C, H, W]``; one image ``[C, H, W]`` for an int."""
        if isinstance(index, int):
            return self.load([range(len(self))[index]])[0]
        return self.load(_rows(index, len(self)))

    def batches(self, index_batches: Iterable[Any]) -> Iterator[torch.Tensor]:
        """``self[idx]`` for each ``idx`` of ``index_batches`` (which may be endless), read
        ahead by DataLoader workers when the store is streamed."""
        if not self.streamed or workers() == 0:
            return (self[idx] for idx in index_batches)
        return _loader_batches(self, index_batches)

    def chunks(self, size: int = CHUNK) -> Iterator[torch.Tensor]:
        """Every image in order, ``size`` at a time."""
        n = len(self)
        return self.batches(torch.arange(i, min(i + size, n)) for i in range(0, n, size))

    def tensor(self) -> torch.Tensor:
        """All images as one float tensor (for small sets and tensor-only components)."""
        if len(self) == 0:
            return torch.empty(0, *self.shape[1:])
        return torch.cat(list(self.chunks()))


def indexed_batches(images: torch.Tensor | ImageStore, index_batches: Iterable[torch.Tensor]
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(idx, images[idx])`` for each index batch (the training loops draw seeded index
    batches, so the images are the same with or without workers reading ahead)."""
    drawn: list[torch.Tensor] = []  # the loader draws indices ahead of what it hands out

    def remember() -> Iterator[torch.Tensor]:
        for idx in index_batches:
            drawn.append(idx)
            yield idx

    for batch in as_store(images).batches(remember()):
        yield drawn.pop(0), batch


def as_store(images: torch.Tensor | ImageStore) -> ImageStore:
    return images if isinstance(images, ImageStore) else TensorImages(images)


class TensorImages(ImageStore):
    """Images in memory: float in [0, 1] or uint8 (divided by 255 when read). With
    ``resize`` (a function of a float batch and a side), batches are brought to ``size``
    when read, so one stored copy serves any resolution."""

    def __init__(self, images: torch.Tensor, *, size: int = 0,
                 resize: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
                 sized_by_run: bool = False) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1] or uint8, got {images.dtype}")
        self.data, self.size, self.resize = images, size, resize
        # True when the user left the size to the run (at_size then changes it).
        self.sized_by_run = sized_by_run and resize is not None

    def __len__(self) -> int:
        return len(self.data)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, c, h, w = self.data.shape
        return (n, c, self.size, self.size) if self.resize and self.size else (n, c, h, w)

    def load(self, rows: list[int]) -> torch.Tensor:
        batch = self.data[rows] if len(rows) != len(self.data) else self.data
        batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch
        if self.resize is not None and self.size:
            batch = self.resize(batch, self.size)
        return batch

    def __getitem__(self, index: Index | int) -> torch.Tensor:
        if isinstance(index, (torch.Tensor, slice, int)) and self.resize is None \
                and self.data.dtype != torch.uint8:
            return self.data[index]  # a view or a gather: as fast as the tensor itself
        return super().__getitem__(index)

    def subset(self, rows: list[int]) -> TensorImages:
        return TensorImages(self.data[rows], size=self.size, resize=self.resize,
                            sized_by_run=self.sized_by_run)

    def at_size(self, size: int) -> TensorImages:
        if not self.sized_by_run:
            return self
        return TensorImages(self.data, size=size, resize=self.resize, sized_by_run=True)

    def fingerprint(self) -> bytes:
        how = "" if self.resize is None else f"{self.resize.__module__}.{self.resize.__qualname__}"
        head = f"{self.data.dtype}|{tuple(self.data.shape)}|{self.size}|{how}".encode()
        return head + hashlib.sha256(_bytes(self.data)).digest()

    def tensor(self) -> torch.Tensor:
        return self.load(list(range(len(self))))


def _bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    # numpy's stubs give ndarray __buffer__ (the Buffer protocol) only on Python 3.12+
    return (memoryview(flat.view(torch.uint8).numpy())  # type: ignore[arg-type]
            if flat.numel() else memoryview(b""))


class ConcatImages(ImageStore):
    """Stores one after another (of the same channels and size)."""

    def __init__(self, parts: Sequence[ImageStore]) -> None:
        self.parts = [p for p in parts if len(p)] or list(parts[:1])
        self.streamed = any(p.streamed for p in self.parts)
        self._starts = torch.tensor([0] + [len(p) for p in self.parts]).cumsum(0)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        _, c, h, w = self.parts[0].shape
        return (len(self), c, h, w)

    def _split(self, rows: list[int]) -> list[tuple[int, list[int], list[int]]]:
        """(part, positions in ``rows``, rows within the part) for each part hit."""
        owner = torch.searchsorted(self._starts, torch.tensor(rows, dtype=torch.long),
                                   right=True) - 1
        out = []
        for p in owner.unique().tolist():  # type: ignore[no-untyped-call]  # torch: unannotated
            where = torch.nonzero(owner == p).flatten().tolist()
            out.append((p, where, [rows[i] - int(self._starts[p]) for i in where]))
        return out

    def load(self, rows: list[int]) -> torch.Tensor:
        batch = torch.empty(len(rows), *self.shape[1:])
        for p, where, inner in self._split(rows):
            batch[where] = self.parts[p].load(inner)
        return batch

    def subset(self, rows: list[int]) -> ImageStore:
        # Each run of consecutive rows in one part becomes that part's subset, in order.
        owner = (torch.searchsorted(self._starts, torch.tensor(rows, dtype=torch.long),
                                    right=True) - 1).tolist()
        pieces: list[ImageStore] = []
        start = 0
        for end in range(1, len(rows) + 1):
            if end == len(rows) or owner[end] != owner[start]:
                p, offset = owner[start], int(self._starts[owner[start]])
                pieces.append(self.parts[p].subset([r - offset for r in rows[start:end]]))
                start = end
        if len(pieces) == 1:
            return pieces[0]
        return ConcatImages(pieces or [self.parts[0].subset([])])

    def at_size(self, size: int) -> ConcatImages:
        return ConcatImages([p.at_size(size) for p in self.parts])

    def fingerprint(self) -> bytes:
        return b"concat|" + b"|".join(hashlib.sha256(p.fingerprint()).digest() for p in self.parts)


# ------------------------------------------------------------------------ streamed files
class _Failed:
    """A batch in which a file could not be decoded (raised in the main process, so the
    user sees one sentence rather than a worker's traceback)."""

    def __init__(self, message: str) -> None:
        self.message = message


class _Rows(Dataset[Any]):
    """One image per row for the DataLoader; decoding errors become a :class:`_Failed`."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, row: int) -> Any:
        try:
            return self.store.load([row])[0].numpy()
        except UserError as error:
            return _Failed(str(error))


def _collate(items: list[Any]) -> Any:
    """A NumPy batch, which reaches the training process pickled through the worker's
    queue. A tensor would travel in torch's shared memory, and the training process kept
    about one batch's worth of memory per batch received that way (measured: +50 MB per
    pass over 5,000 streamed images; nearly flat with NumPy batches)."""
    failed = [i for i in items if isinstance(i, _Failed)]
    return failed[0] if failed else np.stack(items)


def _one_thread(_: int) -> None:
    # Each worker decodes one image at a time; torch ops inside (resizing) must not
    # start a thread pool per worker on top of the training process's threads.
    torch.set_num_threads(1)


def _worker_context() -> Any:
    """Workers start from a small fork server, not as forks of this process. A fork
    shares the training process's memory copy-on-write, and every page the training
    process writes afterwards is duplicated for as long as the worker lives: measured on
    50,000 streamed JPEGs with fine-tuning, peak memory 1.9x that of 1,000 images with
    forked workers, against about 1.1x from the fork server (docs/benchmarks.md)."""
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" not in methods:  # Windows
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # Imported once in the server, so each worker starts in milliseconds.
    context.set_forkserver_preload(["torch", "imgxfer.data.images", "imgxfer.data.files"])
    return context


def _started(loader: DataLoader[Any]) -> Iterator[Any]:
    """The loader's iterator once its workers run. Starting them can fail when the
    machine has no process to spare (other programs took the room :func:`set_workers`
    saw): the fork server's connection then closes (EOFError) or fork fails (OSError)."""
    try:
        return iter(loader)
    except (OSError, EOFError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise UserError(f"could not start {loader.num_workers} worker processes to decode "
                        f"images ({reason}); use fewer --workers, or 0 to decode in the "
                        "main process.") from None


def _loader_batches(store: ImageStore, index_batches: Iterable[Any]) -> Iterator[torch.Tensor]:
    sampler = ([int(i) for i in (idx.tolist() if isinstance(idx, torch.Tensor) else idx)]
               for idx in index_batches)
    # Its own generator: a DataLoader otherwise draws its workers' seeds from the global
    # RNG, and a streamed run would train differently from the same run in memory.
    loader = DataLoader(_Rows(store), batch_sampler=sampler, num_workers=workers(),
                        collate_fn=_collate, worker_init_fn=_one_thread, prefetch_factor=2,
                        generator=torch.Generator().manual_seed(0),
                        multiprocessing_context=_worker_context())
    for batch in _started(loader):
        if isinstance(batch, _Failed):
            raise UserError(batch.message)
        yield torch.from_numpy(batch)
