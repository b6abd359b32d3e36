"""docs/SPEC.md ships with the code: its parameter-count table and canonical-order table must
describe the models this package builds (read from the document, compared with built models)."""

import re
from pathlib import Path

import pytest

import hypermixer
from hypermixer import reference
from hypermixer.model import ModelConfig, build_network

SPEC = Path(__file__).resolve().parent.parent / "docs" / "SPEC.md"


@pytest.fixture(scope="module")
def spec_text():
    if not SPEC.is_file():
        pytest.skip("docs/SPEC.md is not beside this test (tests run from an installed wheel)")
    return SPEC.read_text(encoding="utf-8")


def table_row(text, first_cell):
    """The cells of the first markdown table row whose first cell is ``first_cell``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"docs/SPEC.md has no table row starting with {first_cell!r}")


def leading_count(cell):
    return int(re.match(r"[\d,]+", cell).group(0).replace(",", ""))


def expand(cell):
    """'norm1.{gamma, beta}, w' -> ['norm1.gamma', 'norm1.beta', 'w']."""
    names = []
    for prefix, group, plain in re.findall(r"([\w.]*)\{([^}]*)\}|([\w.]+)", cell):
        if plain:
            names.append(plain)
        else:
            names.extend(prefix + part.strip() for part in group.split(","))
    return names


def test_parameter_table_matches_built_models(spec_text):
    counts = spec_text[spec_text.index("| model | parameters |"):]   # the table of numbers
    vocab = 533   # the seeds' vocabulary, the size section 6 is stated for
    models = {
        "HyperMixer LM": build_network(ModelConfig(), vocab, backend="reference"),
        "Transformer LM": build_network(ModelConfig.transformer(), vocab, backend="reference"),
        "HyperMixer LM, shared hypernetwork": build_network(
            ModelConfig(share_hypernetwork=True), vocab, backend="reference"),
    }
    for label, network in models.items():
        assert leading_count(table_row(counts, label)[1]) == network.parameters(), label
    hm_block = models["HyperMixer LM"].blocks[0]
    assert leading_count(table_row(counts, "HyperMixerBlock")[1]) == hm_block.parameters()
    assert leading_count(table_row(counts, "TransformerBlock")[1]) == \
        models["Transformer LM"].blocks[0].parameters()
    parts = re.findall(r"(\w[\w ]*?) ([\d,]+)", table_row(counts, "HyperMixerBlock")[1]
                       .split("=", 1)[1])
    sizes = {"hypernetwork": hm_block.token_mixing.hypernetwork.parameters(),
             "channel mixing": hm_block.channel_mixing.parameters(),
             "norms": hm_block.norm1.parameters() + hm_block.norm2.parameters()}
    assert {name: int(n.replace(",", "")) for name, n in parts} == sizes


@pytest.mark.parametrize("label, block", [
    ("HyperMixerBlock (12 arrays)", reference.HyperMixerBlock(8, 16, 5, seed=0)),
    ("TransformerBlock (11 arrays)", reference.TransformerBlock(8, 16, 5, seed=0)),
])
def test_canonical_order_table_matches_named_parameters(spec_text, label, block):
    documented = expand(table_row(spec_text, label)[1])
    assert documented == [name for name, _ in block.named_parameters()]
    assert f"({len(documented)} arrays)" in label


def test_hypermixing_example_count_matches_built_layer(spec_text):
    if not hasattr(hypermixer, "HyperMixing"):
        pytest.skip("hypermixer.HyperMixing is not built in this tree")
    stated = re.search(r"at d = (\d+), k = (\d+),\s+h = (\d+) an untied mixer with LayerNorm "
                       r"and no biases has [^=]*= ([\d,]+) parameters", spec_text)
    assert stated, "docs/SPEC.md section 8 lost its HyperMixing parameter example"
    d, k, h = (int(g) for g in stated.groups()[:3])
    layer = hypermixer.HyperMixing(embedding_dim=d, token_mixing_hidden_dim=k, heads=h)
    assert layer.parameters() == int(stated.group(4).replace(",", ""))
