"""A process started by `test_batch.py`:

python -m tests._batch_worker devices OUT.npz
python -m tests._batch_worker distributed PORT PROCESS_ID OUT_DIR
python -m tests._batch_worker resume OUT_DIR SECONDS_PER_TILE
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)


def main(mode: str, *args: str) -> None:
    if mode == "distributed":
        port, process, out = args
        jax.distributed.initialize(
            f"127.0.0.1:{port}", num_processes=2, process_id=int(process)
        )
    from tests import _batch_cases as cases

    if mode == "devices":
        (out,) = args
        assert jax.device_count() == 4, jax.devices()
        mesh = jax.make_mesh((4,), ("tiles",))
        np.savez(out, **cases.run_all(mesh=mesh))
    elif mode == "distributed":
        me = jax.process_index()
        results = cases.run_all()
        results.update(
            {f"host/{k}": v for k, v in cases.run_all(store_on_device=False).items()}
        )
        gathered = cases.run_all(gather=1, store_on_device=False)
        assert (len(gathered) > 0) == (me == 1), (me, len(gathered))
        x1, _ = cases.inputs()
        files = cases.et.batch(cases.model().kernel, cases.BATCH_SIZE, out=f"{out}/mm")
        files(x1, None, get=("nngp", "ntk"))
        np.savez(f"{out}/process{me}.npz", **results)
    elif mode == "resume":
        out, seconds = args
        slow_kernel(float(seconds))(out)
    else:
        raise SystemExit(__doc__)


def slow_kernel(seconds: float, calls: list | None = None):
    """A memmapped NTK whose every tile takes `seconds` (and is counted in
    `calls`), to interrupt and resume."""
    from tests import _batch_cases as cases

    kernel = cases.model().kernel

    def record(x):
        if calls is not None:
            calls.append(1)
        time.sleep(seconds)
        return x

    def kernel_fn(x1, x2, **kwargs):
        out = kernel(x1, x2, **kwargs)
        return jax.pure_callback(record, out, out)

    def run(out):
        x1, _ = cases.inputs()
        batched = cases.et.batch(kernel_fn, 2, out=out)
        return batched(x1, None, get="ntk")

    return run


if __name__ == "__main__":
    main(*sys.argv[1:])
