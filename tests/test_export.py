"""hypermixer evaluate (loss and perplexity) and export (.safetensors that generate/chat
load), the file layout checked by reading it independently of export.py."""

import io
import json
import math
import sys

import numpy as np
import pytest

from hypermixer.checkpoint import load_checkpoint
from hypermixer.cli import main
from hypermixer.datasets import load_texts, make_sequences
from hypermixer.export import ExportError, export_safetensors, load_safetensors
from hypermixer.model import backend_available
from hypermixer.tokenizer import BPETokenizer
from hypermixer.train import evaluate

BACKEND = "compiled" if backend_available("compiled") else "reference"
TINY = ["--embedding-dim", "8", "--hidden-dim", "12", "--num-layers", "1",
        "--max-seq-len", "16", "--backend", BACKEND]
TEXTS = ["the sun is a star.", "the moon goes around the earth.", "rain falls from clouds.",
         "plants need water and light.", "the sea is salty.", "birds can fly.",
         "User: what is snow? Assistant: snow is cold."]


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = root / "data.txt"
    data.write_text("\n".join(TEXTS) + "\n")
    assert main(["train", "--data", str(data), "--out", str(root / "run"), "--epochs", "2",
                 "--lr", "0.02", "--batch-size", "2", *TINY]) == 0
    return root, data


def test_evaluate_prints_the_loss_of_the_training_code(trained, capsys):
    root, data = trained
    code, out, err = run(["evaluate", "--model", root / "run", "--data", data,
                          "--backend", BACKEND], capsys)
    assert code == 0, err
    ckpt = load_checkpoint(root / "run", backend=BACKEND)
    pairs, _ = make_sequences([ckpt.tokenizer.encode(t) for t in load_texts(data)], 16)
    loss = evaluate(ckpt.network, pairs, 16)
    assert out.startswith(f"loss {loss:.4f} perplexity {math.exp(loss):.2f} "
                          f"({len(pairs)} sequences")


def test_export_file_layout_and_round_trip(trained, capsys, tmp_path):
    root, _ = trained
    path = tmp_path / "model.safetensors"
    code, _, err = run(["export", "--model", root / "run", "--out", path,
                        "--backend", BACKEND], capsys)
    assert code == 0, err
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    meta = header.pop("__metadata__")
    assert meta["format"] == "hypermixer-safetensors"
    assert all(isinstance(v, str) for v in meta.values())   # the format allows strings only
    ckpt = load_checkpoint(root / "run", backend=BACKEND)
    names = [name for name, _ in ckpt.network.named_parameters()]
    assert sorted(header) == sorted(names)
    end = 0
    for name, array in ckpt.network.named_parameters():   # contiguous, in order, exact bytes
        entry = header[name]
        assert entry["dtype"] == "F32" and entry["shape"] == list(array.shape)
        begin, stop = entry["data_offsets"]
        assert begin == end
        end = stop
        stored = np.frombuffer(raw[8 + size + begin:8 + size + stop], dtype="<f4")
        np.testing.assert_array_equal(stored.reshape(array.shape), array)
    assert 8 + size + end == len(raw)
    network, tokenizer = load_safetensors(path, backend=BACKEND)
    assert tokenizer.vocabulary == ckpt.tokenizer.vocabulary
    for (name, a), (_, b) in zip(network.named_parameters(), ckpt.network.named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_generate_and_chat_load_the_export(trained, capsys, tmp_path, monkeypatch):
    root, _ = trained
    path = tmp_path / "model.safetensors"
    assert run(["export", "--model", root / "run", "--out", path, "--backend", BACKEND],
               capsys)[0] == 0
    prompt = ["--max-new-tokens", "6", "--backend", BACKEND, "the sun"]
    from_run = run(["generate", "--model", root / "run", *prompt], capsys)
    from_export = run(["generate", "--model", path, *prompt], capsys)
    assert from_run[:2] == from_export[:2]
    monkeypatch.setattr(sys, "stdin", io.StringIO("what is snow?\n"))
    code, out, err = run(["chat", "--model", path, "--max-new-tokens", "4", "--backend",
                          BACKEND], capsys)
    assert code == 0, err
    assert out.startswith("Assistant:")


def test_bpe_tokenizer_travels_in_the_export(tmp_path):
    from hypermixer.model import ModelConfig, build_network
    bpe = BPETokenizer.from_texts(TEXTS * 3, vocab_size=270)
    network = build_network(ModelConfig(embedding_dim=8, hidden_dim=8, num_layers=1,
                                        max_seq_len=8), len(bpe), seed=2, dtype=np.float64,
                            backend=BACKEND)
    export_safetensors(network, bpe, tmp_path / "m.safetensors")
    loaded, tokenizer = load_safetensors(tmp_path / "m.safetensors", backend=BACKEND)
    assert isinstance(tokenizer, BPETokenizer) and tokenizer.vocabulary == bpe.vocabulary
    assert loaded.dtype == np.float64
    for (name, a), (_, b) in zip(loaded.named_parameters(), network.named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("architecture", ["transformer", "hypermixing"])
def test_other_architectures_travel_in_the_export(architecture, tmp_path):
    """The export keeps the configuration (the hypermixing LM's heads and tying too): the
    loaded network has the same parameters and gives the same logits."""
    from hypermixer.model import ModelConfig, build_network
    from hypermixer.tokenizer import Tokenizer
    tokenizer = Tokenizer.from_texts(TEXTS)
    config = ModelConfig(architecture=architecture, embedding_dim=8, hidden_dim=8,
                         num_layers=2, max_seq_len=8)
    network = build_network(config, len(tokenizer), seed=4, backend=BACKEND)
    export_safetensors(network, tokenizer, tmp_path / "m.safetensors")
    loaded, _ = load_safetensors(tmp_path / "m.safetensors", backend=BACKEND)
    assert loaded.config.to_dict() == network.config.to_dict()
    for (name, a), (_, b) in zip(loaded.named_parameters(), network.named_parameters()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    ids = np.array(tokenizer.encode("the sun is a star."))
    np.testing.assert_array_equal(loaded.forward(ids), network.forward(ids))


def test_bad_exports_and_options_are_clear_errors(trained, tmp_path, capsys):
    root, data = trained
    good = tmp_path / "good.safetensors"
    assert run(["export", "--model", root / "run", "--out", good, "--backend", BACKEND],
               capsys)[0] == 0
    raw = good.read_bytes()
    cases = {"empty": b"", "short": raw[:5], "cut": raw[:len(raw) // 2],
             "huge-header": (10**12).to_bytes(8, "little") + raw[8:],
             "not-json": len(b"{oops").to_bytes(8, "little") + b"{oops"}
    for name, content in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(ExportError, match=str(bad)):
            load_safetensors(bad, backend=BACKEND)
        code, _, err = run(["generate", "--model", bad, "--backend", BACKEND, "x"], capsys)
        assert code == 2 and str(bad) in err
    code, _, err = run(["export", "--model", root / "run", "--out", tmp_path / "m.npz"],
                       capsys)
    assert code == 2 and ".safetensors" in err


def _rewrite(path, out, edit_header=None, edit_data=None):
    """A copy of the export at ``path`` with its header (dict) or data (bytearray) edited."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    data = bytearray(raw[8 + size:])
    if edit_header:
        edit_header(header)
    if edit_data:
        edit_data(header, data)
    encoded = json.dumps(header).encode()
    out.write_bytes(len(encoded).to_bytes(8, "little") + encoded + bytes(data))
    return out


def _hypermixing_export(tmp_path, tied):
    from hypermixer.model import ModelConfig, build_network
    from hypermixer.tokenizer import Tokenizer
    tokenizer = Tokenizer.from_texts(TEXTS)
    config = ModelConfig(architecture="hypermixing", embedding_dim=8, hidden_dim=8,
                         num_layers=2, max_seq_len=8, heads=2, tied=tied)
    network = build_network(config, len(tokenizer), seed=4, backend=BACKEND)
    path = export_safetensors(network, tokenizer, tmp_path / f"hm{tied}.safetensors")
    return network, tokenizer, path


def test_an_untied_export_from_before_tied_was_stored_loads_untied(tmp_path):
    """Exports written before configurations stored "tied" were untied; read without the
    key they used to load as tied, the second generators dropped without a word."""
    network, tokenizer, path = _hypermixing_export(tmp_path, tied=False)

    def drop_tied(header):
        config = json.loads(header["__metadata__"]["config"])
        del config["tied"]
        header["__metadata__"]["config"] = json.dumps(config)
    old = _rewrite(path, tmp_path / "old.safetensors", edit_header=drop_tied)
    loaded, _ = load_safetensors(old, backend=BACKEND)
    assert loaded.config.resolved_tied is False
    assert loaded.parameters() == network.parameters()
    ids = np.array(tokenizer.encode("the sun is a star."))
    np.testing.assert_array_equal(loaded.forward(ids), network.forward(ids))


def test_exports_that_do_not_match_their_network_are_refused(tmp_path):
    """Tensors the network does not have, non-finite values, malformed entries and a layer
    count far beyond the tensors in the file: ExportError naming the file, nothing built for
    the last (it used to build every layer first: 10**6 layers did not finish in minutes)."""
    import time
    network, tokenizer, path = _hypermixing_export(tmp_path, tied=True)
    name = network.named_parameters()[0][0]

    def extra(header):
        header["stray.w"] = dict(header[name])

    def nan(header, data):
        begin, _ = header[name]["data_offsets"]
        data[begin:begin + 4] = np.array([np.nan], np.float32).tobytes()

    def bad_offsets(header):
        header[name]["data_offsets"] = 5

    def no_offsets(header):
        del header[name]["data_offsets"]

    def many_layers(header):
        config = json.loads(header["__metadata__"]["config"])
        config["num_layers"] = 10**6
        header["__metadata__"]["config"] = json.dumps(config)
    cases = {"extra": dict(edit_header=extra), "nan": dict(edit_data=nan),
             "bad-offsets": dict(edit_header=bad_offsets),
             "no-offsets": dict(edit_header=no_offsets),
             "many-layers": dict(edit_header=many_layers)}
    for label, edit in cases.items():
        bad = _rewrite(path, tmp_path / f"{label}.safetensors", **edit)
        start = time.perf_counter()
        with pytest.raises(ExportError, match=str(bad)):
            load_safetensors(bad, backend=BACKEND)
        assert time.perf_counter() - start < 5, label
