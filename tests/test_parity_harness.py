"""The parity harness reads every size, call argument and seed from each fixture's JSON: a fixture set
made with other seeds and sizes (tests/parity/make_set.py, through $METIS_GOLDEN_DIR) passes every
checker, and a set with one tampered tensor fails."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.parity.fixture import DEFAULT_DIR, load_index
from tests.parity.make_set import make_set
from tests.test_reference_parity import check_fixture


@pytest.fixture(scope="module")
def alternative(tmp_path_factory):
    return make_set(tmp_path_factory.mktemp("golden_alternative"))


def test_an_alternative_fixture_set_passes_every_checker(alternative, monkeypatch):
    monkeypatch.setenv("METIS_GOLDEN_DIR", str(alternative))
    index, shipped = load_index(), load_index(DEFAULT_DIR)
    assert set(index["fixtures"]) == set(shipped["fixtures"])  # every kind of fixture, under the same names
    for name in sorted(index["fixtures"]):
        alt = (alternative / index["fixtures"][name]["json"]).read_text()
        assert alt != (DEFAULT_DIR / shipped["fixtures"][name]["json"]).read_text()  # other sizes, calls and seeds
        check_fixture(name)


@pytest.mark.parametrize("name,key", [("rd_s2a", "out2.tokens"), ("s2a", "out.layer3.logits"), ("rd_tts", "out.tokens"),
                                      ("metis_base", "fd2.out.mask_prob"), ("metis_se_lora", "out.embeds_unmerged_lora"),
                                      ("acoustic_codec", "out1.wav")])
def test_a_tampered_tensor_fails(alternative, tmp_path, name, key):
    root = tmp_path / "tampered"
    shutil.copytree(alternative, root)
    check_fixture(name, root)  # the untouched copy passes
    io_file = root / load_index(root)["fixtures"][name]["files"]["io"]
    io = load_file(str(io_file))
    x = io[key]
    if x.is_floating_point():
        io[key] = x + 1e-3 * (torch.arange(x.numel()).reshape(x.shape) == x.numel() // 2)  # one element, above tolerance
    else:
        flat = x.flatten().clone()
        flat[flat.numel() // 2] = 1 - flat[flat.numel() // 2]
        io[key] = flat.reshape(x.shape)
    save_file(io, str(io_file))
    with pytest.raises(AssertionError, match=key.replace(".", r"\.")):
        check_fixture(name, root)
