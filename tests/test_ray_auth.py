"""Ray's token authentication (Ray 2.60+) and its console noise, as `dub` meets them.

`ray start --head` turns token authentication on once ~/.ray/auth_token exists (a first local
`ray.init()` writes it), but a client given `--address` sends no token unless RAY_AUTH_MODE=token:
it retried for ~20 s with InvalidAuthToken warnings, then a traceback. workflows/ray_cluster.py
turns token mode on when it finds a token where Ray looks, and says in one line what to set when
the cluster still refuses. A successful embedded run printed Ray's auth warning and an ERROR line
about Ray Data's own actor wrapper; both are gone, real errors stay.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dub.workflows.ingest import IngestConfig, ingest
from dub.workflows.ray_cluster import (
    KNOWN_RAY_NOISE,
    RayAuthError,
    _prepare_token_auth,
    find_auth_token,
    quiet_known_ray_lines,
)
from tests.process_helpers import ERROR_LOOKING, PROJECT_ROOT, kill_session
from tests.video_factory import make_video

AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


# -- where the token comes from -----------------------------------------------------------------


def _cases(tmp_path: Path) -> dict[str, tuple[dict, Path]]:
    """name -> (environment, HOME) covering every place Ray reads a token from, and their order."""
    home, empty_home = tmp_path / "home", tmp_path / "empty_home"
    (home / ".ray").mkdir(parents=True)
    empty_home.mkdir()
    (home / ".ray" / "auth_token").write_text("home-token\n")
    (tmp_path / "named").write_text("  named-token  \n")
    return {
        "env wins": ({"RAY_AUTH_TOKEN": " env-token ", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "named")}, home),
        "named file next": ({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "named")}, home),
        "empty env is none": ({"RAY_AUTH_TOKEN": ""}, home),
        "home file last": ({}, home),
        "nothing": ({}, empty_home),
    }


def test_find_auth_token_looks_where_ray_looks_in_rays_order(tmp_path):
    expected = {
        "env wins": ("env-token", "RAY_AUTH_TOKEN"),
        "named file next": ("named-token", f"RAY_AUTH_TOKEN_PATH ({tmp_path / 'named'})"),
        "empty env is none": ("home-token", str(tmp_path / "home" / ".ray" / "auth_token")),
        "home file last": ("home-token", str(tmp_path / "home" / ".ray" / "auth_token")),
        "nothing": None,
    }
    for name, (environ, home) in _cases(tmp_path).items():
        token = find_auth_token(environ, home=home)
        assert (token and (token.value, token.source)) == expected[name], name
    with pytest.raises(RayAuthError, match="RAY_AUTH_TOKEN_PATH is .*missing.*cannot be read or is empty"):
        find_auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, home=tmp_path / "home")


def test_find_auth_token_agrees_with_rays_own_token_loader(tmp_path):
    """Ray's C++ loader, asked in a child process (it caches per process), finds the same token in
    every case: dub's lookup is only a mirror of it, used to decide before Ray is asked."""
    cases = _cases(tmp_path)
    script = (
        "import json, os, sys\n"
        "from ray._raylet import AuthenticationTokenLoader as L\n"
        "loader = L.instance()\n"
        "print(json.dumps(loader.get_token_for_http_header(ignore_auth_mode=True)"
        " if loader.has_token(ignore_auth_mode=True) else None))\n"
    )
    for name, (environ, home) in cases.items():
        env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
        env.update(environ, HOME=str(home))
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        header = proc.stdout.strip().splitlines()[-1]
        token = find_auth_token(environ, home=home)
        assert header == ("null" if token is None else f'{{"authorization": "Bearer {token.value}"}}'), name


# -- what connect() does before ray.init ------------------------------------------------------


def test_joining_an_address_turns_token_mode_on_only_with_a_token_and_never_over_the_user(tmp_path, monkeypatch):
    import dub.workflows.ray_cluster as ray_cluster

    asked = []
    monkeypatch.setattr(ray_cluster, "_gcs_refuses", lambda address: asked.append(address) or False)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path))  # no ~/.ray/auth_token
    with_token = {"RAY_AUTH_TOKEN": "t0k"}
    _prepare_token_auth("10.0.0.1:6379", with_token)
    assert with_token["RAY_AUTH_MODE"] == "token"
    without = {}
    _prepare_token_auth("10.0.0.1:6379", without)
    assert "RAY_AUTH_MODE" not in without  # Ray's default: no token sent, and a cluster without auth works
    disabled = {"RAY_AUTH_TOKEN": "t0k", "RAY_AUTH_MODE": "disabled"}
    _prepare_token_auth("10.0.0.1:6379", disabled)
    assert disabled["RAY_AUTH_MODE"] == "disabled"  # the user's choice stands
    assert asked == ["10.0.0.1:6379"] * 3  # the cluster is asked each time whether it takes what Ray sends


@pytest.mark.parametrize(
    "environ, says",
    [
        ({"RAY_AUTH_TOKEN": "wrong"}, "refused the authentication token from RAY_AUTH_TOKEN; set RAY_AUTH_TOKEN"),
        ({}, "requires token authentication and no token was found here; set RAY_AUTH_TOKEN"),
        ({"RAY_AUTH_MODE": "disabled"}, "but RAY_AUTH_MODE is 'disabled'; unset it or set RAY_AUTH_MODE=token"),
    ],
)
def test_a_cluster_that_refuses_us_is_one_line_naming_what_to_set(tmp_path, monkeypatch, environ, says):
    import dub.workflows.ray_cluster as ray_cluster

    monkeypatch.setattr(ray_cluster, "_gcs_refuses", lambda address: True)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path))
    with pytest.raises(RayAuthError) as err:
        _prepare_token_auth("10.0.0.1:6379", dict(environ))
    message = str(err.value)
    assert "\n" not in message and message.startswith("the Ray cluster at 10.0.0.1:6379 ") and says in message
    assert "`ray get-auth-token`" in message


# -- the stderr filter --------------------------------------------------------------------------


def test_quiet_known_ray_lines_drops_only_rays_known_line(capfd):
    """What Ray's C++ logger writes straight to file descriptor 2 goes through the filter: the
    known line is dropped, every other line and a trailing partial line get through, in order;
    Python's sys.stderr writes straight to the real stderr meanwhile."""
    noise = (
        f"[2026-01-01 00:00:00,000 E 1 1] core_worker.cc:2465: Actor with class name: "
        f"'MapWorker(MapBatches(GenerateReplica))' and ID: 'ab' {KNOWN_RAY_NOISE[0]}. If the ...\n"
    )
    with quiet_known_ray_lines():
        os.write(2, b"[2026-01-01 00:00:00,000 E 1 1] raylet_client.cc:1: a real error\n")
        os.write(2, noise.encode())
        print("python's own line", file=sys.stderr)
        os.write(2, b"a partial line")
    err = capfd.readouterr().err
    assert "a real error\n" in err and "python's own line\n" in err and err.endswith("a partial line")
    assert KNOWN_RAY_NOISE[0] not in err
    os.write(2, b"after\n")  # fd 2 is the real stderr again
    assert capfd.readouterr().err == "after\n"


# -- for real: a stock `ray start --head` cluster ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env.update(HOME=str(home), PYTHONPATH=str(PROJECT_ROOT), COLUMNS="200", **extra)
    return env


@pytest.mark.slow  # a head node, a generate run against it and two refused ones: ~50 s on 2 busy cores
def test_generate_joins_a_stock_ray_start_head_cluster_with_token_auth(tmp_path):
    """HOME holds a token (`ray get-auth-token --generate`, as a first local ray.init leaves one), so
    `ray start --head` runs with token authentication; `dub generate --address 127.0.0.1:PORT`
    without RAY_AUTH_MODE generates the clip and prints no auth warning. A wrong RAY_AUTH_TOKEN, or
    no token at all, is one error line within seconds, instead of 20 s of retries and a traceback.
    The head node is stopped by killing its process session (`ray stop` would stop every Ray on
    the machine, the test session's own included)."""
    ray = str(Path(sys.executable).with_name("ray"))
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run([ray, "get-auth-token", "--generate"], env=_env(home), check=True, capture_output=True, timeout=120)
    assert (home / ".ray" / "auth_token").is_file()
    make_video(tmp_path / "videos" / "one.mp4", seconds=1.0, fps=25, size=(64, 48))
    manifest = tmp_path / "m.parquet"
    ingest([tmp_path / "videos"], manifest, IngestConfig(workers=0))

    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="dubray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    head_log = tmp_path / "head.log"
    with open(head_log, "wb") as log:
        head = subprocess.Popen(
            [
                ray,
                "start",
                "--head",
                "--block",
                "--port",
                str(port),
                "--num-cpus",
                "2",
                "--object-store-memory",
                "200000000",
                "--temp-dir",
                temp_dir,
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            env=_env(home),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while b"Ray runtime started" not in head_log.read_bytes():
            assert head.poll() is None and time.monotonic() < deadline, head_log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        assert b"Token authentication is enabled" in head_log.read_bytes()

        address = f"127.0.0.1:{port}"
        args = [sys.executable, "-m", "dub.cli", "generate", "-m", str(manifest), "--address", address, "--quiet"]
        ok = subprocess.run(
            args + ["-o", str(tmp_path / "out")], env=_env(home), capture_output=True, text=True, timeout=300
        )
        assert ok.returncode == 0, ok.stderr[-3000:]
        assert not ERROR_LOOKING.search(ok.stderr), ok.stderr[-3000:]
        assert [r["status"] for r in pq.read_table(tmp_path / "out" / "report.parquet").to_pylist()] == ["done"]

        for env, says in (
            (_env(home, RAY_AUTH_TOKEN="wrong"), "refused the authentication token from RAY_AUTH_TOKEN"),
            (_env(tmp_path), "requires token authentication and no token was found here"),
        ):
            started = time.monotonic()
            refused = subprocess.run(
                args + ["-o", str(tmp_path / "refused")], env=env, capture_output=True, text=True, timeout=300
            )
            said = " ".join(refused.stderr.split())
            assert refused.returncode == 2 and f"error: the Ray cluster at {address} {says}" in said, refused.stderr
            assert "InvalidAuthToken" not in refused.stderr and "Traceback" not in refused.stderr
            assert time.monotonic() - started < 20, "a refused token still waits for Ray's retries"
    finally:
        kill_session(head)
        subprocess.run(["rm", "-rf", temp_dir], check=False)
