"""The products' text vectors kept beside a FAISS index (`search._text_vectors`): a new process's text search (each
CLI search) takes them from there instead of encoding every product again; a changed text or another encoder is
encoded, never given a stale vector; a read-only index or a damaged file is never an error."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from skulens.search._text_vectors import FILE
from skulens.search.engine import SearchEngine
from skulens.search.index import IndexRecord, create_index, open_index

QUERIES = ["oat drink", "dark bread with seeds"]
PRODUCTS = [("oat-milk", "Oat milk", "A plant-based drink made from oats. Sold in a yellow carton."),
            ("rye-bread", "Rye bread", "Sourdough rye, baked dark. With sunflower seeds."),
            ("red-apple", "Red apple", "A sweet red apple, crisp and juicy.")]


class _CountingEncoder:
    """A stand-in sentence encoder (a hashed bag of words) that records each batch it encodes; `digest` names its
    weights, as `TextEncoder.digest` does. A new one is what a new process loads."""

    dim = 32

    def __init__(self, digest: str = "bag-of-words-1") -> None:
        self.digest = digest
        self.batches: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        out = np.zeros((len(texts), 32), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().replace(".", " ").split():
                out[i, sum(map(ord, w)) % 32] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    @property
    def pieces(self) -> list[str]:
        """The texts it encoded that were not the queries."""
        return [t for b in self.batches if b != QUERIES for t in b]


def _unnamed() -> _CountingEncoder:
    encoder = _CountingEncoder()
    del encoder.digest
    return encoder


def _build(path: Path) -> Path:
    index = create_index("faiss", str(path), 8)
    records = [IndexRecord(id=f"{p}/0", product_id=p, label=p, title=title, text=text)
               for p, title, text in PRODUCTS]
    index.add(records, np.eye(len(records), 8, dtype=np.float32))
    index.save()
    index.close()
    return path


def _search(path: Path, encoder: _CountingEncoder, mode: str = "text") -> tuple[list, np.ndarray]:
    """One process's text search: a new engine on the index as opened from disk. Its hits and piece vectors."""
    engine = SearchEngine(None, open_index(path))
    engine.text_encoder = lambda: encoder  # type: ignore[method-assign]
    hits = engine.by_text(QUERIES, k=3, mode=mode)
    vectors = engine._product_texts(encoder).vectors(encoder)[0]
    engine.index.close()
    return hits, vectors


def _all_pieces(path: Path) -> set[str]:
    engine = SearchEngine(None, open_index(path))
    return {p for ps in engine._product_texts(None).pieces for p in ps}


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in folder.iterdir()}


def test_a_second_process_takes_the_vectors_from_beside_the_index_and_finds_the_same(tmp_path: Path) -> None:
    path = _build(tmp_path / "idx")
    first = _CountingEncoder()
    hits, vectors = _search(path, first)
    assert sorted(first.pieces) == sorted(_all_pieces(path))  # every piece, once
    assert (path / FILE).is_file()
    for mode in ("text", "hybrid"):
        again = _CountingEncoder()
        hits_again, vectors_again = _search(path, again, mode)
        assert again.batches == [QUERIES]  # the queries alone: no product was encoded again
        if mode == "text":
            assert hits_again == hits
            assert vectors_again.dtype == np.float32 and np.array_equal(vectors_again, vectors)
    assert hits[0][0].product_id == "oat-milk" and hits[1][0].product_id == "rye-bread"


def test_a_changed_text_is_encoded_and_the_others_are_not(tmp_path: Path) -> None:
    path = _build(tmp_path / "idx")
    _search(path, _CountingEncoder())
    before = _all_pieces(path)
    index = open_index(path)  # another process changes one product's text
    rec = index.records("rye-bread")[0]
    index.upsert([dataclasses.replace(rec, text="Sourdough rye with caraway.")], index.vectors([rec.id]))
    index.save()
    index.close()
    new = _all_pieces(path) - before
    assert any("caraway" in p for p in new)
    encoder = _CountingEncoder()
    _, vectors = _search(path, encoder)
    assert sorted(encoder.pieces) == sorted(new)  # the new pieces alone
    # the new pieces' vectors are what encoding gives them, the others the first process's
    _, encoded = _search(path, _unnamed())
    assert np.array_equal(vectors, encoded)
    later = _CountingEncoder()  # the file now holds the new pieces too
    _search(path, later)
    assert later.pieces == []


def test_another_text_encoder_encodes_every_product_again(tmp_path: Path) -> None:
    path = _build(tmp_path / "idx")
    _search(path, _CountingEncoder("tuned:a"))
    retuned = _CountingEncoder("tuned:b")  # a re-tuned encoder: same texts, other weights
    _search(path, retuned)
    assert sorted(retuned.pieces) == sorted(_all_pieces(path))
    unnamed = _unnamed()  # an encoder that cannot say what it is: no file is read or written
    (path / FILE).unlink()
    _search(path, unnamed)
    assert sorted(unnamed.pieces) == sorted(_all_pieces(path)) and not (path / FILE).exists()


def _flip_last_byte(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x40  # a bit of the last row's data: the header still reads
    f.write_bytes(bytes(data))


def _retag(f: Path) -> None:
    from safetensors.numpy import load_file, save_file

    save_file(load_file(str(f)), str(f), metadata={"format": "something-else"})


@pytest.mark.parametrize("damage", [
    pytest.param(lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]), id="cut-short"),
    pytest.param(lambda f: f.write_bytes(b"\x00" * 64), id="zeros"),
    pytest.param(lambda f: f.write_bytes(b""), id="empty"),
    pytest.param(_flip_last_byte, id="a-flipped-bit"),
    pytest.param(_retag, id="not-ours"),
])
def test_a_damaged_file_is_ignored_and_replaced(tmp_path: Path, damage) -> None:
    path = _build(tmp_path / "idx")
    hits, vectors = _search(path, _CountingEncoder())
    damage(path / FILE)
    encoder = _CountingEncoder()
    hits_again, vectors_again = _search(path, encoder)
    assert sorted(encoder.pieces) == sorted(_all_pieces(path))  # encoded, never read from the damaged file
    assert hits_again == hits and np.array_equal(vectors_again, vectors)
    later = _CountingEncoder()
    _search(path, later)
    assert later.pieces == []  # written whole again


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """`folder` takes no new files, as a read-only mount's: mode 0555, or for root (who writes there anyway) the
    immutable attribute (chattr +i: no file is created, renamed or removed in it)."""
    mode = folder.stat().st_mode
    folder.chmod(0o555)
    immutable = False
    try:
        if os.geteuid() == 0:
            chattr = shutil.which("chattr")
            if chattr is None or subprocess.run([chattr, "+i", str(folder)], check=False,
                                                capture_output=True).returncode:
                pytest.skip("running as root without chattr +i here: a folder cannot be made read-only")
            immutable = True
        try:
            (folder / "probe").touch()
        except OSError:
            pass
        else:
            (folder / "probe").unlink()
            pytest.skip("this file system lets a read-only folder be written")
        yield
    finally:
        if immutable:
            subprocess.run([shutil.which("chattr") or "chattr", "-i", str(folder)], check=True)
        folder.chmod(mode)


def test_a_read_only_index_is_searched_and_nothing_is_written_to_it(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = _build(tmp_path / "idx")
    reference, _ = _search(path, _CountingEncoder())
    (path / FILE).unlink()
    before = _files(path)
    with _read_only(path):
        encoder = _CountingEncoder()
        with caplog.at_level("WARNING"):
            hits, _ = _search(path, encoder)  # no file to read, none can be written: encoded as before
        assert hits == reference and sorted(encoder.pieces) == sorted(_all_pieces(path))
        assert not caplog.records  # not even a warning
    assert _files(path) == before  # nothing created (no .lock, no temporary), nothing changed
    _search(path, _CountingEncoder())  # writable again: the file is written
    before = _files(path)
    with _read_only(path):
        encoder = _CountingEncoder()
        hits, _ = _search(path, encoder)
        assert hits == reference and encoder.pieces == []  # read from the read-only folder
    assert _files(path) == before


@pytest.mark.parametrize("folder_made", [False, True], ids=["no-folder", "empty-folder"])
def test_an_index_not_saved_yet_gets_no_file(tmp_path: Path, folder_made: bool) -> None:
    if folder_made:
        (tmp_path / "new").mkdir()  # create() takes an empty folder: a file written there would make it refuse
    index = create_index("faiss", str(tmp_path / "new"), 8)
    index.add([IndexRecord(id="a", product_id="oat-milk", label="oat-milk", title="Oat milk")],
              np.eye(1, 8, dtype=np.float32))
    engine = SearchEngine(None, index)
    encoder = _CountingEncoder()
    engine.text_encoder = lambda: encoder  # type: ignore[method-assign]
    assert engine.by_text(["oat"], mode="text")[0][0].product_id == "oat-milk"
    assert os.listdir(tmp_path / "new") == [] if folder_made else not (tmp_path / "new").exists()
    index.save()
    assert FILE not in os.listdir(tmp_path / "new")


def test_two_cli_searches_encode_the_products_once_with_the_real_encoder(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Through `skulens search` as a user runs it, with MiniLM: the second run encodes its query alone, and a
    change to the encoder's weights (a re-tune) changes its digest, so nothing of the file is read."""
    pytest.importorskip("sentence_transformers")
    import torch

    from skulens.cli import main
    from skulens.models.text import TextEncoder, load_text_encoder

    path = _build(tmp_path / "idx")
    encoded: list[int] = []
    real = TextEncoder.encode

    def counting(self: TextEncoder, texts, **kw):
        encoded.append(len(texts))
        return real(self, texts, **kw)

    monkeypatch.setattr(TextEncoder, "encode", counting)
    search = ["search", "--index", str(path), "--text", "oat drink", "--mode", "text", "-k", "2"]
    outputs = []
    for _ in range(2):
        encoded.clear()
        assert main(search) == 0
        outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")])
    assert outputs[0] == outputs[1] and outputs[0][0]["hits"][0]["product_id"] == "oat-milk"
    assert encoded == [1]  # the query: every product's vectors came from the file

    minilm = load_text_encoder()
    other = TextEncoder()  # another load of the same weights: the same digest
    assert other is not minilm and other.digest == minilm.digest
    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)  # a re-tune's new weights
    assert other.digest != minilm.digest  # read from the weights now, not kept from before the change
    engine = SearchEngine(None, open_index(path))
    engine.text_encoder = lambda: other  # type: ignore[method-assign]
    encoded.clear()
    engine.by_text(["oat drink"], mode="text")
    assert encoded[0] == len(_all_pieces(path))  # every piece encoded again with the new weights



_WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from skulens.search._text_vectors import save_text_vectors

class Encoder:
    digest = "bag-of-words-1"

folder, w = Path(sys.argv[1]), int(sys.argv[2])
by_text = {f"piece {i}": np.full(32, w + i / 1000, np.float32) for i in range(2000)}
save_text_vectors(folder, Encoder.digest, list(by_text), np.stack(list(by_text.values())))
(folder.parent / f"ready-{w}").touch()
while not (folder.parent / "stop").exists():
    save_text_vectors(folder, Encoder.digest, list(by_text), np.stack(list(by_text.values())))
"""


def test_processes_writing_at_once_each_leave_a_whole_file(tmp_path: Path) -> None:
    """Two processes replacing the file while a third reads it: every read finds one writer's whole set of
    vectors, never a torn file or a mix of the two."""
    import sys
    import time

    from skulens.search._text_vectors import load_text_vectors

    folder = tmp_path / "idx"
    folder.mkdir()
    texts = [f"piece {i}" for i in range(2000)]
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(folder), str(w)]) for w in (1, 2)]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready-{w}").exists() for w in (1, 2)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in writers), "a writer did not start"
            time.sleep(0.05)
        for _ in range(300):
            found, _ = load_text_vectors(folder, _CountingEncoder().digest, texts, width=32)
            assert list(found) == texts  # a whole file, every time
            w = float(found[texts[0]][0])
            assert w in (1.0, 2.0) and all(found[t][0] == np.float32(w + i / 1000) for i, t in enumerate(texts)
                                           if i % 97 == 0)  # one writer's rows, not a mix
    finally:
        (tmp_path / "stop").touch()
        for p in writers:
            p.wait(timeout=60)
    assert [p.returncode for p in writers] == [0, 0]
    assert os.listdir(folder) == [FILE]  # no temporary left behind


def test_a_search_that_encodes_nothing_does_not_write_the_file(tmp_path: Path) -> None:
    path = _build(tmp_path / "idx")
    _search(path, _CountingEncoder())
    before = _files(path)
    encoder = _CountingEncoder()
    _search(path, encoder)
    assert encoder.pieces == [] and _files(path) == before  # not rewritten: same bytes, same mtime


def _planted(path: Path, texts: list[str], vectors: np.ndarray) -> None:
    """A file with this encoder's digest and a right checksum, holding `vectors` (whatever their shape)."""
    from skulens.search._text_vectors import save_text_vectors

    save_text_vectors(path, _CountingEncoder().digest, texts, vectors)
    assert (path / FILE).is_file()


@pytest.mark.parametrize("kind", ["narrow", "nan", "huge"])
def test_a_well_formed_file_with_unusable_vectors_is_ignored_and_replaced(tmp_path: Path, kind: str) -> None:
    path = _build(tmp_path / "idx")
    reference, vectors = _search(path, _CountingEncoder())
    texts = sorted(_all_pieces(path))
    bad = {"narrow": np.ones((len(texts), 3), np.float32),  # another width than the encoder's
           "nan": np.full((len(texts), 32), np.nan, np.float32),
           "huge": np.full((len(texts), 32), np.inf, np.float32)}[kind]
    _planted(path, texts, bad)
    encoder = _CountingEncoder()
    hits, again = _search(path, encoder)  # no error, no NaN scores: encoded as if there were no file
    assert sorted(encoder.pieces) == sorted(texts) and hits == reference and np.array_equal(again, vectors)
    later = _CountingEncoder()
    _search(path, later)
    assert later.pieces == []  # the file was written again, whole


def test_a_file_claiming_millions_of_rows_is_not_read(tmp_path: Path) -> None:
    """A sparse file whose header claims 4 M rows (640 MB, almost no disk): not read into memory."""
    import struct
    import tracemalloc

    from skulens.search._text_vectors import _FORMAT, load_text_vectors

    path = _build(tmp_path / "idx")
    encoder = _CountingEncoder()
    rows = 4_000_000
    header = json.dumps({"__metadata__": {"format": _FORMAT, "encoder": encoder.digest, "checksum": "x"},
                         "hashes": {"dtype": "U8", "shape": [rows, 32], "data_offsets": [0, rows * 32]},
                         "vectors": {"dtype": "F32", "shape": [rows, 32],
                                     "data_offsets": [rows * 32, rows * 32 + rows * 128]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path / FILE, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + rows * 160)
    tracemalloc.start()
    try:
        found, rewrite = load_text_vectors(path, encoder.digest, sorted(_all_pieces(path)), width=encoder.dim)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found == {} and rewrite
    assert peak < 50 << 20  # not the 640 MB the header claims


def test_a_fifo_in_the_files_place_does_not_hang_the_search(tmp_path: Path) -> None:
    import threading

    path = _build(tmp_path / "idx")
    os.mkfifo(path / FILE)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_search(path, _CountingEncoder())), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and result  # answered, not stuck opening the FIFO
    assert (path / FILE).is_file()  # replaced by a real file


def test_a_file_of_products_gone_since_is_written_smaller(tmp_path: Path) -> None:
    from skulens.search._text_vectors import load_text_vectors

    path = _build(tmp_path / "idx")
    texts = sorted(_all_pieces(path))
    first = _CountingEncoder()
    _search(path, first)
    _, vectors = _search(path, _CountingEncoder())
    gone = [f"a product removed since, piece {i}" for i in range(500)]
    rows = {t: v for t, v in zip(texts, first.encode(texts), strict=True)}
    _planted(path, texts + gone, np.stack([*rows.values(), *first.encode(gone)]))
    encoder = _CountingEncoder()
    _, again = _search(path, encoder)
    assert encoder.pieces == [] and np.array_equal(again, vectors)  # read, not encoded
    from safetensors import safe_open

    with safe_open(str(path / FILE), framework="numpy") as f:
        assert f.get_slice("hashes").get_shape()[0] == len(texts)  # the gone products' rows left out
    found, rewrite = load_text_vectors(path, _CountingEncoder().digest, texts, width=32)
    assert len(found) == len(texts) and not rewrite


@pytest.mark.skipif(sys.platform == "win32", reason="os.kill(pid, 0) ends a process there: nothing is removed")
def test_a_save_removes_the_temporaries_of_writers_killed_mid_write(tmp_path: Path) -> None:
    """A SIGKILL mid-save left `NAME.PID.TID.tmp` (as large as the file) beside an index, and every later kill
    another: a save now removes those of writers gone from this machine once they are an hour old."""
    import time

    import torch

    from skulens.models.bundle import ORPHAN_AGE_S, atomic_save_tensors

    target = tmp_path / "text-vectors.safetensors"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()  # a process that has ended: its pid is free
    old = time.time() - ORPHAN_AGE_S - 60
    orphan = tmp_path / f"{target.name}.{gone}.140.tmp"
    young = tmp_path / f"{target.name}.{gone}.141.tmp"  # a writer elsewhere may be mid-write: kept under an hour
    alive = tmp_path / f"{target.name}.{os.getppid()}.142.tmp"  # a live process's: kept at any age
    other = tmp_path / f"other.safetensors.{gone}.143.tmp"  # another file's: not this save's business
    for p in (orphan, young, alive, other):
        p.write_bytes(b"half a file")
    for p in (orphan, alive, other):
        os.utime(p, (old, old))
    atomic_save_tensors({"x": torch.zeros(2)}, target)
    assert not orphan.exists()
    assert young.exists() and alive.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, young.name, alive.name, other.name])
