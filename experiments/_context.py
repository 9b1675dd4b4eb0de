"""`Context`: what an experiment's `run(cfg, ctx)` gets from the runner."""

import io
import pathlib
import re
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from experiments._checkpoint import CheckpointStore
from experiments._distributed import (
    any_process,
    is_writer,
    same_on_all_processes,
    to_host,
)
from experiments._errors import CheckpointError, Interrupted
from experiments._io import atomic_write

State = TypeVar("State")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SignalGuard:
    """SIGTERM/SIGINT handling while a command runs.

    Inside `ctx.loop` a signal only sets a flag: the loop finishes its chunk, saves a checkpoint
    and raises `Interrupted`. Anywhere else (or on a second signal) `Interrupted` is raised at
    once. Handlers are installed on `__enter__` and restored on `__exit__`.
    """

    def __init__(self) -> None:
        self.pending: int | None = None
        self.in_loop = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "SignalGuard":
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            # None: the previous handler was installed outside Python and cannot be restored.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.in_loop and self.pending is None:
            self.pending = signum
            return
        raise Interrupted(f"stopped by {signal.Signals(signum).name}", signum)


class Context:
    """The runner's services for one experiment run.

    Attributes:
        cfg: the experiment's config (the scale's config with command-line overrides applied).
        scale: "smoke", "quick" or "paper".
        seed: the run's seed.
        key: `jax.random.PRNGKey(seed)`.
        out_dir: where the run's files go (`pathlib.Path`).
        mesh: a 1-D `jax.sharding.Mesh` over all global devices, axis name "batch".

    Example:
        >>> def run(cfg, ctx):
        ...     x, y = ctx.shard(make_data(ctx.key, cfg))
        ...     params = ctx.replicate(init_params(cfg))
        ...     params = ctx.loop("train", params, lambda p, start: train_chunk(p, x, y, start),
        ...                       cfg.steps, chunk=100)
        ...     return Result(metrics={"loss": float(loss(params, x, y))}, claims=[])
    """

    def __init__(
        self,
        *,
        cfg: Any,
        scale: str,
        seed: int,
        out_dir: pathlib.Path,
        checkpoint_every_s: float = 60.0,
        resume: bool = False,
        signals: SignalGuard | None = None,
    ):
        self.cfg = cfg
        self.scale = scale
        self.seed = seed
        self.key = jax.random.PRNGKey(seed)
        self.out_dir = pathlib.Path(out_dir)
        self.mesh = Mesh(np.array(jax.devices()), ("batch",))
        self._writer = is_writer()
        self._store = CheckpointStore(self.out_dir / "checkpoints", writer=self._writer)
        self._checkpoint_every_s = float(checkpoint_every_s)
        self._resume = resume
        self._signals = signals if signals is not None else SignalGuard()
        self._names: set[str] = set()
        self.figures: list[str] = []

    # ---- placement ---------------------------------------------------------------------------

    def shard(self, tree: Any, axis: int = 0) -> Any:
        """Place every array leaf sharded along `axis` over `mesh` (all global devices).

        Every process must pass the same full host data (generate it from the seed).

        Args:
            tree: a pytree of arrays (numpy or JAX); their size along `axis` must be a
                multiple of the device count.
            axis: the axis to split.

        Returns:
            The same pytree of global `jax.Array`s with `NamedSharding(mesh, P(..., "batch"))`.

        Example:
            >>> x, y = ctx.shard((x, y))  # doctest: +SKIP
        """
        count = self.mesh.size
        spec = PartitionSpec(*([None] * axis), "batch")
        sharding = NamedSharding(self.mesh, spec)

        def place(path: Any, x: Any) -> Any:
            shape = np.shape(x)
            if len(shape) <= axis:
                raise ValueError(
                    f"ctx.shard: leaf {jtu.keystr(path) or '<root>'} has shape {shape}, "
                    f"which has no axis {axis} to shard"
                )
            if shape[axis] % count:
                raise ValueError(
                    f"ctx.shard: leaf {jtu.keystr(path) or '<root>'} has size {shape[axis]} "
                    f"along axis {axis}, which is not a multiple of the device count {count}; "
                    f"pad or trim it to a multiple of {count}"
                )
            return jax.device_put(self._host_input(x), sharding)

        return jtu.tree_map_with_path(place, tree)

    def replicate(self, tree: Any) -> Any:
        """Place every array leaf fully replicated over `mesh`.

        Example:
            >>> params = ctx.replicate(params)  # doctest: +SKIP
        """
        sharding = NamedSharding(self.mesh, PartitionSpec())
        return jtu.tree_map(lambda x: jax.device_put(self._host_input(x), sharding), tree)

    def gather(self, tree: Any) -> Any:
        """A fully replicated host numpy copy of every JAX array leaf (works across processes).

        Every process must call it with the same tree.

        Example:
            >>> w = ctx.gather(params)["w"]  # doctest: +SKIP
        """
        return jtu.tree_map(to_host, tree)

    @staticmethod
    def _host_input(x: Any) -> Any:
        # A global array can be resharded directly; process-local data is converted to numpy
        # so that `device_put` builds the global array from identical data on every process.
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x
        if jax.process_count() > 1:
            return np.asarray(x)
        return x

    # ---- long computations -------------------------------------------------------------------

    def loop(
        self,
        name: str,
        state: State,
        step_fn: Callable[[State, int], State],
        num_steps: int,
        *,
        chunk: int = 1,
        desc: str | None = None,
    ) -> State:
        """Run `state = step_fn(state, start)` for start = 0, chunk, 2*chunk, ... < num_steps.

        `step_fn` advances `chunk` steps (e.g. a jitted `lax.scan`); its randomness must come from
        `jax.random.fold_in(key, step)`, never from Python state, so that a resumed run is exact.
        Shows a progress bar with ETA, checkpoints `state` every `--checkpoint-every` seconds, at
        the end and on SIGTERM/SIGINT, and on `--resume` continues from the saved step (a loop
        already complete returns its saved state).

        Args:
            name: unique within the run; names the checkpoint `checkpoints/<name>.eqx`.
            state: the initial state, a pytree of arrays and scalars.
            step_fn: `(state, start) -> state`, advancing `chunk` steps.
            num_steps: total steps, a multiple of `chunk`.
            chunk: steps per call of `step_fn`.
            desc: the progress bar's label (default: `name`).

        Returns:
            The final state.

        Example:
            >>> params = ctx.loop("train", params, train_chunk, 10_000, chunk=100)  # doctest: +SKIP
        """
        self._claim_name(name)
        if not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"ctx.loop({name!r}): num_steps must be an int >= 0, got {num_steps}")
        if not isinstance(chunk, int) or chunk < 1 or num_steps % chunk:
            raise ValueError(
                f"ctx.loop({name!r}): chunk must be a positive int dividing num_steps={num_steps}, "
                f"got {chunk}"
            )
        step = 0
        if self._resume:
            loaded = self._store.load_loop(name, state, self.mesh)
            if loaded is not None:
                meta, restored = loaded
                if meta["num_steps"] != num_steps or meta["chunk"] != chunk:
                    raise CheckpointError(
                        f"checkpoint of loop {name!r} in {self._store.directory} was made with "
                        f"num_steps={meta['num_steps']}, chunk={meta['chunk']}; this run has "
                        f"num_steps={num_steps}, chunk={chunk}"
                    )
                step, state = int(meta["step"]), restored
                self.log(f"resuming loop {name!r} at step {step}/{num_steps}")
            if not same_on_all_processes(step):
                raise CheckpointError(
                    f"processes resumed loop {name!r} at different steps; --resume with several "
                    "processes needs --out on a filesystem that every process sees"
                )
        if step >= num_steps:
            return state

        from tqdm.auto import tqdm

        bar = tqdm(
            total=num_steps,
            initial=step,
            desc=desc or name,
            unit="step",
            disable=not self._writer,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        last_save = time.monotonic()
        self._signals.in_loop = True
        try:
            while step < num_steps:
                state = jax.block_until_ready(step_fn(state, step))
                step += chunk
                bar.update(chunk)
                due = time.monotonic() - last_save >= self._checkpoint_every_s
                due, stop = any_process(due, self._signals.pending is not None)
                if due or stop or step == num_steps:
                    self._store.save_loop(
                        name, state, step=step, num_steps=num_steps, chunk=chunk, mesh=self.mesh
                    )
                    last_save = time.monotonic()
                if stop:
                    signum = self._signals.pending or signal.SIGTERM
                    raise Interrupted(
                        f"stopped by {signal.Signals(signum).name} at step {step}/{num_steps} of "
                        f"loop {name!r}; checkpoint saved in {self._store.directory}, continue "
                        "with --resume",
                        signum,
                    )
        finally:
            self._signals.in_loop = False
            bar.close()
        return state

    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        """`fn()`, cached in a checkpoint so that a resumed run skips a completed stage.

        The result is returned as host numpy leaves (also on the first run, so that a resumed
        run computes exactly the same thing); place it again with `shard`/`replicate`.

        Args:
            name: unique within the run; names the checkpoint `checkpoints/<name>.pkl`.
            fn: computes a pytree of arrays/numbers (lists, tuples, dicts, NamedTuples).

        Returns:
            The (host) result.

        Example:
            >>> x, y = ctx.stage("data", lambda: make_data(ctx.key, cfg))  # doctest: +SKIP
        """
        self._claim_name(name)
        if self._resume:
            found, value = self._store.load_stage(name)
            if not same_on_all_processes(int(found)):
                raise CheckpointError(
                    f"processes disagree on whether stage {name!r} is saved; --resume with "
                    "several processes needs --out on a filesystem that every process sees"
                )
            if found:
                self.log(f"stage {name!r} loaded from its checkpoint")
                return value
        value = self.gather(fn())
        self._store.save_stage(name, value)
        return value

    # ---- output ------------------------------------------------------------------------------

    def save_figure(self, fig: Any, filename: str) -> None:
        """Write a matplotlib figure as PNG into `out_dir` (atomically) and close it.

        Args:
            fig: a `matplotlib.figure.Figure`.
            filename: a plain file name ending in ".png"; the plot is linked from report.md.

        Example:
            >>> fig, ax = plt.subplots(); ax.plot(losses); ctx.save_figure(fig, "loss.png")
        """
        import matplotlib.pyplot as plt

        try:
            if not filename.endswith(".png") or not _NAME.match(filename):
                raise ValueError(
                    f"ctx.save_figure: filename must be a plain name ending in .png, "
                    f"got {filename!r}"
                )
            if self._writer:
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
                atomic_write(self.out_dir / filename, buf.getvalue())
                if filename not in self.figures:
                    self.figures.append(filename)
        finally:
            plt.close(fig)

    def log(self, msg: str) -> None:
        """Print a message (process 0 only), without breaking progress bars."""
        if self._writer:
            from tqdm.auto import tqdm

            tqdm.write(str(msg), file=sys.stdout)
            sys.stdout.flush()

    def _claim_name(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name) or name == "run":
            raise ValueError(
                f"checkpoint name must match [A-Za-z0-9][A-Za-z0-9_.-]* and not be 'run', "
                f"got {name!r}"
            )
        if name in self._names:
            raise ValueError(f"ctx.loop/ctx.stage name {name!r} is used twice in this run")
        self._names.add(name)
