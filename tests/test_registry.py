"""The local weights registry (model/weights/registry.py) and `dub weights` (dub/commands/weights.py)."""

from __future__ import annotations

import hashlib
import json
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

from dub.model.weights.registry import (
    KNOWN_FILES,
    MISMATCH,
    MISSING,
    OK,
    UNVERIFIABLE,
    KnownFile,
    MissingWeightsError,
    UnsafeCheckpointError,
    WeightsRegistry,
    WeightsVerificationError,
    load_state_dict,
    resolve_root,
    safetensors_metadata,
)


def small_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "conv_pre.weight": torch.randn(8, 4, 3, generator=gen),
        "conv_pre.bias": torch.randn(8, generator=gen),
        "blocks.0.scale": torch.randn(8, generator=gen).to(torch.bfloat16),
        "steps": torch.tensor(12345, dtype=torch.int64),
    }


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TouchMarker:
    """Unpickling this runs code: it would create `marker` (a stand-in for anything worse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def booby_trapped_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"generator": {"w": torch.ones(2)}, "trap": TouchMarker(marker)}, path)
    return path


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# -- locating files ------------------------------------------------------------------------


def test_root_comes_from_argument_then_env_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DUB_WEIGHTS_DIR", str(tmp_path / "from_env"))
    assert resolve_root(tmp_path / "explicit") == (tmp_path / "explicit").resolve()
    assert resolve_root() == (tmp_path / "from_env").resolve()
    monkeypatch.delenv("DUB_WEIGHTS_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_root() == (tmp_path / "home" / ".cache" / "dub" / "weights").resolve()


def test_missing_file_names_the_file_its_place_and_its_url(tmp_path):
    registry = WeightsRegistry(tmp_path)
    with pytest.raises(MissingWeightsError) as info:
        registry.path("mmaudio", "mmaudio_small_16k.pth")
    message = str(info.value)
    assert "mmaudio_small_16k.pth" in message
    assert str(tmp_path.resolve() / "mmaudio" / "mmaudio_small_16k.safetensors") in message
    assert "https://huggingface.co/hkchengrex/MMAudio/resolve/main/weights/mmaudio_small_16k.pth" in message
    assert "dub weights import" in message


def test_unknown_file_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="v1-16.pth"):
        WeightsRegistry(tmp_path).path("mmaudio-ext", "v1-32.pth")


def test_known_table_records_mmaudio_md5_sums():
    by_file = {k.file: k for k in KNOWN_FILES}
    assert by_file["mmaudio_small_16k.pth"].md5 == "af93cde404179f58e3919ac085b8033b"
    assert by_file["mmaudio_large_44k_v2.pth"].md5 == "01ad4464f049b2d7efdaa4c1a59b8dfe"
    assert by_file["synchformer_state_dict.pth"].md5 == "5b2f5594b0730f70e41e549b7c94390c"
    for known in KNOWN_FILES:
        assert known.url.startswith("https://") or known.model == "mf-mjt"
        assert known.has_checksum or known.note  # no checksum -> the table says why


def test_a_download_dropped_in_place_is_found_and_verified(tmp_path):
    source = tmp_path / "dl" / "vocoder.pth"
    source.parent.mkdir()
    torch.save(small_state_dict(), source)
    known = KnownFile("toy", "vocoder.pth", "https://example.org/vocoder.pth", md5=md5_of(source))
    registry = WeightsRegistry(tmp_path / "weights", known=[known])
    (registry.root / "toy").mkdir(parents=True)
    placed = registry.root / "toy" / "vocoder.pth"
    placed.write_bytes(source.read_bytes())
    assert registry.path("toy", "vocoder.pth", verify=True) == placed
    assert registry.verify()[0].status == OK
    flip_last_byte(placed)
    result = registry.verify()[0]
    assert result.status == MISMATCH and "md5" in result.detail


# -- import and conversion -----------------------------------------------------------------


def test_import_converts_a_pth_to_safetensors_with_identical_tensors(tmp_path):
    state = small_state_dict()
    source = tmp_path / "best_netG.pt"
    torch.save({"generator": state, "epoch": 7, "optimizer": {"state": {0: {"m": torch.zeros(3)}}}}, source)
    known = KnownFile("toy", "best_netG.pt", "https://example.org/best_netG.pt", md5=md5_of(source))
    registry = WeightsRegistry(tmp_path / "weights", known=[known])

    dest = registry.import_file(source)
    assert dest == registry.root / "toy" / "best_netG.safetensors"
    loaded = load_file(str(dest))
    assert set(loaded) == set(state)
    for name, tensor in state.items():  # conversion copies the bits: exact
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    meta = safetensors_metadata(dest)
    assert json.loads(meta["dub.nesting"]) == ["generator"]
    assert json.loads(meta["dub.extras"]) == {"epoch": 7}
    assert json.loads(meta["dub.dropped"]) == ["optimizer"]
    assert meta["dub.source_md5"] == known.md5
    assert registry.path("toy", "best_netG.pt", verify=True) == dest
    [result] = registry.verify()
    assert result.status == OK and "md5 matches" in result.detail
    # the shared loader reads the converted file and the original alike
    for path in (dest, source):
        assert all(torch.equal(load_state_dict(path)[k], state[k]) for k in state)


def test_import_accepts_numpy_arrays_as_data(tmp_path):
    source = tmp_path / "Cnn14.pth"
    torch.save(
        {
            "model": {"fc.weight": torch.ones(2, 2)},
            "iteration": np.int64(300000),
            "pca": np.arange(6, dtype=np.float32).reshape(2, 3),
        },
        source,
    )
    registry = WeightsRegistry(tmp_path / "w", known=[KnownFile("toy", "Cnn14.pth", "https://example.org/c")])
    dest = registry.import_file(source)
    assert set(load_file(str(dest))) == {"fc.weight"}
    assert json.loads(safetensors_metadata(dest)["dub.extras"]) == {"iteration": 300000}
    [result] = registry.verify()
    assert result.status == OK and "no checksum" in result.detail


def test_import_refuses_a_download_that_fails_its_checksum(tmp_path):
    source = tmp_path / "v1-16.pth"
    torch.save(small_state_dict(), source)
    known = KnownFile("toy", "v1-16.pth", "https://example.org/v1-16.pth", md5="0" * 32)
    registry = WeightsRegistry(tmp_path / "weights", known=[known])
    with pytest.raises(WeightsVerificationError, match="md5") as info:
        registry.import_file(source)
    assert "https://example.org/v1-16.pth" in str(info.value)
    assert not (registry.root / "toy").exists() or not any((registry.root / "toy").iterdir())


def test_a_converted_file_damaged_after_import_is_refused(tmp_path):
    source = tmp_path / "net.pth"
    torch.save(small_state_dict(), source)
    registry = WeightsRegistry(
        tmp_path / "weights", known=[KnownFile("toy", "net.pth", "https://e.org/net.pth", sha256=(sha256_of(source),))]
    )
    dest = registry.import_file(source)
    assert registry.verify()[0].status == OK
    flip_last_byte(dest)  # the last tensor's bytes
    result = registry.verify()[0]
    assert result.status == MISMATCH and "changed since import" in result.detail
    with pytest.raises(WeightsVerificationError, match="import"):
        registry.path("toy", "net.pth", verify=True)


def test_a_checksum_published_as_a_sha256_prefix_is_checked(tmp_path):
    source = tmp_path / "vggish.pth"
    torch.save(small_state_dict(1), source)
    good = KnownFile("toy", "vggish.pth", "https://e.org/v", sha256_prefix=sha256_of(source)[:8])
    bad = KnownFile("toy", "vggish.pth", "https://e.org/v", sha256_prefix="ffffffff")
    assert WeightsRegistry(tmp_path / "a", known=[good]).import_file(source).is_file()
    with pytest.raises(WeightsVerificationError, match="prefix"):
        WeightsRegistry(tmp_path / "b", known=[bad]).import_file(source)


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    trap = booby_trapped_checkpoint(tmp_path / "evil.pth", marker)
    registry = WeightsRegistry(tmp_path / "weights", known=[KnownFile("toy", "evil.pth", "https://e.org/e")])
    with pytest.raises(UnsafeCheckpointError, match="refusing"):
        load_state_dict(trap)
    with pytest.raises(UnsafeCheckpointError, match="TouchMarker|touch|code"):
        registry.import_file(trap)
    bin_copy = tmp_path / "evil.bin"  # the other reader path (.bin)
    bin_copy.write_bytes(trap.read_bytes())
    with pytest.raises(UnsafeCheckpointError):
        load_state_dict(bin_copy)
    assert not marker.exists()
    assert not (registry.root / "toy" / "evil.safetensors").exists()
    # the trap is real: plain unpickling does run it
    torch.load(trap, weights_only=False)
    assert marker.exists()


def test_list_reports_presence_and_cached_verification(tmp_path):
    source = tmp_path / "a.pth"
    torch.save(small_state_dict(), source)
    known = [
        KnownFile("toy", "a.pth", "https://e.org/a", md5=md5_of(source)),
        KnownFile("toy", "config.json", "https://e.org/c"),
    ]
    registry = WeightsRegistry(tmp_path / "w", known=known)
    assert [r.verified for r in registry.list()] == [MISSING, MISSING]
    registry.import_file(source)
    config = tmp_path / "config.json"
    config.write_text("{}")
    registry.import_file(config)
    rows = {r.file: r for r in registry.list()}
    assert rows["a.pth"].present and rows["a.pth"].verified == OK  # import verified it
    assert rows["config.json"].verified == UNVERIFIABLE


# -- the CLI -------------------------------------------------------------------------------


def weights_cli() -> typer.Typer:
    from dub.commands import weights

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    weights.register(app)
    return app


def test_cli_list_on_an_empty_dir_shows_every_file_missing(tmp_path):
    result = CliRunner().invoke(weights_cli(), ["weights", "list", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for known in KNOWN_FILES:
        row = [line for line in lines if f" {known.file} " in line]
        assert row and "missing" in row[0], known.file
    assert f"{len(KNOWN_FILES)} missing" in result.output


def test_cli_import_then_verify_and_fail_on_damage(tmp_path, monkeypatch):
    weights_dir = tmp_path / "w"
    source = tmp_path / "dl" / "mf_mjt_small_16k.safetensors"
    source.parent.mkdir()
    from safetensors.torch import save_file

    save_file(small_state_dict(), str(source), metadata={"dub.network_config": '{"depth": 2}'})
    runner, app = CliRunner(), weights_cli()
    imported = runner.invoke(app, ["weights", "import", str(source), "--dir", str(weights_dir)])
    assert imported.exit_code == 0, imported.output
    placed = weights_dir / "mf-mjt" / "mf_mjt_small_16k.safetensors"
    assert safetensors_metadata(placed)["dub.network_config"] == '{"depth": 2}'  # the checkpoint's own note kept
    monkeypatch.setenv("DUB_WEIGHTS_DIR", str(weights_dir))  # --dir omitted: the env var decides
    ok = runner.invoke(app, ["weights", "verify"])
    assert ok.exit_code == 0, ok.output
    flip_last_byte(placed)
    bad = runner.invoke(app, ["weights", "verify", "mf-mjt"])
    assert bad.exit_code == 1
    assert "mismatch" in bad.output and "failed verification" in bad.output


def test_cli_import_of_an_unknown_file_says_how_to_name_it(tmp_path):
    source = tmp_path / "mystery.pth"
    torch.save(small_state_dict(), source)
    result = CliRunner().invoke(weights_cli(), ["weights", "import", str(source), "--dir", str(tmp_path / "w")])
    assert result.exit_code == 1
    assert "--model" in result.output and "--file" in result.output
