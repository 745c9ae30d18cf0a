"""`et.batch`: tiled, sharded, multi-process and memmapped kernels.

Every batched mode runs one compiled program per kind of tile, so their results
are the same float64 numbers, which is checked with `np.array_equal` (across
processes too). Against the direct, one-call computation the tiles agree to
rounding only: XLA orders the sums of its reductions (the input Gram matrix,
sums over channels) by array shape, so a row of 4 examples and the same row
in a batch of 23 may differ in the last bits. `_assert_rounding_close` allows
`64 eps` of the largest entry; a tile in the wrong place is off by O(1).
"""

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

import eqtangents as et
from tests import _batch_cases as cases

_ROOT = Path(__file__).resolve().parents[1]


_EPS64 = float(np.finfo(np.float64).eps)


def _assert_rounding_close(actual, expected, eps=_EPS64):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=64 * eps * scale)


def _direct() -> dict:
    """Every case computed in one call."""
    x1, x2 = cases.inputs()
    results = {}
    for name, (kernel_fn, kwargs, _) in cases.cases().items():
        for label, second in (("sym", None), ("cross", x2)):
            for key, value in cases.flat(kernel_fn(x1, second, **kwargs)).items():
                results[f"{name}/{label}{key}"] = value
    return results


@pytest.fixture(scope="module")
def direct():
    return _direct()


@pytest.fixture(scope="module")
def tiled():
    return cases.run_all()


def test_tiles_equal_the_direct_computation(direct, tiled):
    assert set(tiled) == set(direct)
    for name in direct:
        _assert_rounding_close(tiled[name], direct[name])


def test_host_and_memmap_tiles_are_the_same_numbers(tiled, tmp_path):
    host = cases.run_all(store_on_device=False)
    assert all(isinstance(v, np.ndarray) for v in host.values())
    assert set(host) == {name for name in tiled if not name.startswith("kernel/")}
    for name in host:
        np.testing.assert_array_equal(host[name], tiled[name])
    x1, x2 = cases.inputs()
    model = cases.model()
    for second in (None, x2):
        out = tmp_path / ("sym" if second is None else "cross")
        files = et.batch(model.kernel, cases.BATCH_SIZE, out=out)(
            x1, second, get=("nngp", "ntk")
        )
        assert isinstance(files.ntk, np.memmap) and not files.ntk.flags.writeable
        assert sorted(p.name for p in out.iterdir()) == [
            "meta.json",
            "nngp.npy",
            "ntk.npy",
            "tiles_done.npy",
        ]
        label = "sym" if second is None else "cross"
        np.testing.assert_array_equal(files.nngp, tiled[f"analytic/{label}.nngp"])
        np.testing.assert_array_equal(
            np.load(out / "ntk.npy"), tiled[f"analytic/{label}.ntk"]
        )


def test_one_tile_is_the_direct_computation_exactly():
    """With one tile the batched function runs the direct computation."""
    x1, x2 = cases.inputs()
    model = cases.model()
    for second in (None, x2):
        k = et.batch(model.kernel, 100)(x1, second)
        d = model.kernel(x1, second)
        np.testing.assert_array_equal(k.nngp, d.nngp)
        np.testing.assert_array_equal(k.ntk, d.ntk)


def test_symmetric_kernels_compute_the_upper_triangle_only():
    calls = []

    def kernel_fn(x1, x2):
        calls.append(x2 is None)
        return cases.model().kernel(x1, x2, get="ntk")

    x1, _ = cases.inputs()
    k = et.batch(kernel_fn, 5)(x1, None)  # 5 x 5 tiles
    # One trace to read the output's shape, one each for diagonal and
    # off-diagonal tiles.
    assert calls == [True, True, False]
    # Tiles below the diagonal are the transposes of those above (diagonal
    # tiles, computed whole, are symmetric only to rounding, like the direct
    # kernel).
    tile = np.arange(cases.N1) // 5
    off_diagonal = tile[:, None] != tile[None, :]
    np.testing.assert_array_equal(
        np.asarray(k)[off_diagonal], np.asarray(k).T[off_diagonal]
    )
    counted = []

    def counting(x1, x2):
        out = cases.model().kernel(x1, x2, get="ntk")
        return jax.pure_callback(lambda o: counted.append(1) or o, out, out)

    et.batch(counting, 5)(x1, None)
    assert len(counted) == 5 * 6 // 2  # the shape probe does not run


@pytest.mark.parametrize("diagonal_spatial", [False, True])
def test_spatial_kernels_transpose_their_interleaved_pairs(diagonal_spatial):
    x = np.random.default_rng(1).normal(size=(7, 2, 4, 3))
    model = et.Serial(
        et.Conv(4, (2, 2), padding="SAME"),
        et.Relu(),
        et.Conv(4, (3, 3), padding="SAME"),
    )
    direct = model.kernel(x, None, diagonal_spatial=diagonal_spatial)
    tiled = et.batch(model.kernel, 3)(x, None, diagonal_spatial=diagonal_spatial)
    assert tiled.diagonal_spatial == diagonal_spatial
    for field in ("nngp", "ntk", "cov1"):
        _assert_rounding_close(getattr(tiled, field), getattr(direct, field))
    # As arrays, the layout is named by `symmetry`; "auto" computes every tile.
    nngp = direct.nngp
    symmetry = "batch" if diagonal_spatial else "pairs"
    for option in (symmetry, "auto", None):
        out = et.batch(model.kernel, 3, symmetry=option)(
            x, None, get="nngp", diagonal_spatial=diagonal_spatial
        )
        _assert_rounding_close(out, nngp)


def test_model_kernel_batch_size_option(tiled):
    x1, x2 = cases.inputs()
    ntk = cases.model().kernel(x1, x2, "ntk", batch_size=cases.BATCH_SIZE)
    np.testing.assert_array_equal(ntk, tiled["analytic/cross.ntk"])
    with pytest.raises(ValueError, match="Serial.kernel: `batch_size`.*diagonal_batch"):
        cases.model().kernel(x1, None, diagonal_batch=True, batch_size=4)


def test_inputs_may_be_pytrees_and_memmaps(tmp_path):
    x1, x2 = cases.inputs()
    path = tmp_path / "x.npy"
    np.save(path, x1)
    on_disk = np.load(path, mmap_mode="r")
    model = cases.model()
    k = et.batch(model.kernel, 4)(on_disk, x2, get="nngp")
    np.testing.assert_array_equal(k, et.batch(model.kernel, 4)(x1, x2, get="nngp"))
    two = et.Parallel(et.Dense(4), et.Dense(4))
    both = et.batch(two.kernel, 4)((x1, x1[:, :3]), None, get="nngp")
    direct = two.kernel((x1, x1[:, :3]), None, get="nngp")
    for tiled_branch, direct_branch in zip(both, direct):
        _assert_rounding_close(tiled_branch, direct_branch)


def test_progress_bar(capsys):
    x1, _ = cases.inputs()
    model = cases.model()
    et.batch(model.kernel, 8, progress=True)(x1, None, get="ntk")
    assert "6/6" in capsys.readouterr().err  # 3 x 3 tiles, upper triangle
    et.batch(model.kernel, 8)(x1, None, get="ntk")  # not a terminal: silent
    assert capsys.readouterr().err == ""


def test_jit_and_grad_through_tiles():
    x1, x2 = cases.inputs()
    model = cases.model()

    def loss(x, batched):
        return jnp.sum(batched(x, x2, get="ntk") ** 2)

    tiled = functools.partial(loss, batched=et.batch(model.kernel, 4))
    direct = functools.partial(loss, batched=model.kernel)
    np.testing.assert_allclose(jax.jit(tiled)(x1), direct(x1), rtol=1e-13)
    np.testing.assert_allclose(jax.grad(tiled)(x1), jax.grad(direct)(x1), rtol=1e-12)
    f32 = et.batch(model.kernel, 4)(x1.astype(np.float32), None, get="ntk")
    assert f32.dtype == np.float32
    direct32 = model.kernel(x1.astype(np.float32), None, get="ntk")
    _assert_rounding_close(f32, direct32, eps=np.finfo(np.float32).eps)


def _run_worker(*args, env=None, timeout=300):
    env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tests._batch_worker", *args],
        cwd=_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_tiles_spread_over_four_devices(tiled, tmp_path):
    out = tmp_path / "devices.npz"
    flags = "--xla_force_host_platform_device_count=4"
    done = _run_worker("devices", str(out), env={"XLA_FLAGS": flags})
    assert done.returncode == 0, done.stderr[-3000:]
    sharded = np.load(out)
    assert set(sharded.files) == set(tiled)
    for name in tiled:
        np.testing.assert_array_equal(sharded[name], tiled[name])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_assemble_the_single_process_kernel(tiled, tmp_path):
    port = str(_free_port())
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests._batch_worker",
                "distributed",
                port,
                str(p),
                str(tmp_path),
            ],
            cwd=_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for p in (0, 1)
    ]
    logs = [w.communicate(timeout=300)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), logs[0][-2000:] + logs[1][-2000:]
    for p in (0, 1):
        results = np.load(tmp_path / f"process{p}.npz")
        for name in tiled:
            np.testing.assert_array_equal(results[name], tiled[name])
            if not name.startswith("kernel/"):
                np.testing.assert_array_equal(results[f"host/{name}"], tiled[name])
    np.testing.assert_array_equal(
        np.load(tmp_path / "mm" / "ntk.npy"), tiled["analytic/sym.ntk"]
    )
    np.testing.assert_array_equal(
        np.load(tmp_path / "mm" / "nngp.npy"), tiled["analytic/sym.nngp"]
    )


def test_an_interrupted_computation_resumes_where_it_stopped(tmp_path):
    from tests._batch_worker import slow_kernel

    out = tmp_path / "ntk"
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests._batch_worker", "resume", str(out), "0.1"],
        cwd=_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    total = 12 * 13 // 2  # 23 examples in tiles of 2: 12 x 12, upper triangle
    deadline = time.monotonic() + 240
    finished = 0
    while time.monotonic() < deadline:
        if (out / "tiles_done.npy").exists() and (out / "meta.json").exists():
            finished = int(np.load(out / "tiles_done.npy").sum())
            if finished >= 10:
                break
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    done = np.load(out / "tiles_done.npy")
    finished = int(done.sum())
    assert 10 <= finished < total, finished

    calls = []
    ntk = slow_kernel(0.0, calls)(out)
    assert len(calls) == total - finished  # the finished tiles are not recomputed
    x1, _ = cases.inputs()
    np.testing.assert_array_equal(
        ntk, et.batch(cases.model().kernel, 2)(x1, None, get="ntk")
    )
    calls.clear()
    slow_kernel(0.0, calls)(out)  # everything is there: nothing to compute
    assert calls == []


def test_bad_arguments_name_the_fix(tmp_path):
    x1, x2 = cases.inputs()
    model = cases.model()
    with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
        et.batch(model.kernel, 0)
    with pytest.raises(ValueError, match="`symmetry='pairs'`, but .* not pairs"):
        conv = et.Conv(4, (2,), padding="SAME")  # nngp (N1, N2, 5): no pairs
        et.batch(conv.kernel, 4, symmetry="pairs")(
            x1.reshape(23, 1, 5), None, get="nngp", diagonal_spatial=True
        )
    with pytest.raises(ValueError, match="`symmetry='upper'`"):
        et.batch(model.kernel, 4, symmetry="upper")
    with pytest.raises(ValueError, match="an `et.Kernel` cannot hold; ask for arrays"):
        et.batch(model.kernel, 4, store_on_device=False)(x1, None)
    with pytest.raises(ValueError, match="the same number of them"):
        et.batch(model.kernel, 4)((x1, x2), None)
    with pytest.raises(ValueError, match="must start with the batch axes"):
        et.batch(lambda a, b: jnp.sum(a), 4)(x1, None)
    with pytest.raises(ValueError, match=r"does not start with \(4, 4\)"):
        et.batch(lambda a, b: jnp.zeros((3, 3)), 4)(x1, None)
    # A type error from the signature (jaxtyping) or the library's own message.
    with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="mesh"):
        et.batch(model.kernel, 4, mesh=jax.devices())(x1, None, get="ntk")
    et.batch(model.kernel, 4, out=tmp_path)(x1, None, get="ntk")
    with pytest.raises(ValueError, match="holds the tiles of another computation .*n1"):
        et.batch(model.kernel, 4, out=tmp_path)(x1[:20], None, get="ntk")
