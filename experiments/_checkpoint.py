"""Checkpoints of loop states and stage results under `out_dir/checkpoints/`.

A loop state is stored as `<name>.eqx` (the leaves as consecutive `.npy` records in
depth-first order, the layout of `equinox.tree_serialise_leaves`) plus `<name>.json` with the
step, the content hash and where each leaf lived (host, one device, or a `PartitionSpec` over
the "batch" mesh), so a resumed run places every leaf exactly as the interrupted run had it.
A stage result is a pickle of host numpy leaves, `<name>.pkl` plus `<name>.json`.
"""

import hashlib
import io
import json
import pathlib
import pickle
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from experiments._distributed import to_host
from experiments._errors import CheckpointError
from experiments._io import atomic_write

_SCALARS = (bool, int, float, complex)


def _is_array_leaf(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, *_SCALARS))


def _placement(x: Any, mesh: Mesh) -> Any:
    """JSON description of where a leaf lives: "host", "device" or {"mesh": spec}."""
    if not isinstance(x, jax.Array):
        return "host"
    sharding = x.sharding
    if isinstance(sharding, NamedSharding) and sharding.mesh.axis_names == mesh.axis_names:
        if set(sharding.mesh.devices.flat) == set(mesh.devices.flat):
            spec = [list(p) if isinstance(p, tuple) else p for p in sharding.spec]
            return {"mesh": spec}
    if len(sharding.device_set) == 1 and x.is_fully_addressable:
        return "device"
    if x.is_fully_replicated:
        return {"mesh": []}
    raise CheckpointError(
        f"cannot checkpoint an array sharded as {sharding}; ctx.loop states must be on one "
        f"device or sharded over ctx.mesh"
    )


def _place(value: np.ndarray, placement: Any, like: Any, mesh: Mesh) -> Any:
    if placement == "host":
        if isinstance(like, _SCALARS):
            return type(like)(value.item())
        if isinstance(like, np.generic):
            return value[()]
        return value
    if placement == "device":
        return jax.device_put(value)
    spec = PartitionSpec(*[tuple(p) if isinstance(p, list) else p for p in placement["mesh"]])
    return jax.device_put(value, NamedSharding(mesh, spec))


class CheckpointStore:
    """Reads and writes checkpoints in one directory; only the writer process writes.

    Args:
        directory: `out_dir/checkpoints`.
        writer: whether this process writes (process 0).
    """

    def __init__(self, directory: pathlib.Path, *, writer: bool):
        self.directory = pathlib.Path(directory)
        self.writer = writer

    # ---- loops -------------------------------------------------------------------------------

    def save_loop(
        self, name: str, state: Any, *, step: int, num_steps: int, chunk: int, mesh: Mesh
    ) -> None:
        """Save a loop state (every process must call this: sharded leaves are gathered)."""
        leaves = jtu.tree_leaves(state)
        placements = [_placement(x, mesh) if _is_array_leaf(x) else None for x in leaves]
        host = [to_host(x) if _is_array_leaf(x) else None for x in leaves]
        if not self.writer:
            return
        buf = io.BytesIO()
        shapes = []
        for x in host:
            if x is None:
                shapes.append(None)
                continue
            arr = np.asarray(x)
            np.save(buf, arr, allow_pickle=False)
            shapes.append(list(arr.shape))
        payload = buf.getvalue()
        meta = {
            "kind": "loop",
            "step": step,
            "num_steps": num_steps,
            "chunk": chunk,
            "num_leaves": len(leaves),
            "shapes": shapes,
            "placements": placements,
        }
        self._write(name, ".eqx", payload, meta)

    def load_loop(self, name: str, like: Any, mesh: Mesh) -> tuple[dict, Any] | None:
        """The saved (meta, state) of loop `name`, placed like the saved one; `None` if absent.

        Args:
            name: the loop name.
            like: the loop's initial state (gives the tree structure and non-array leaves).
            mesh: the run's mesh.
        """
        found = self._read(name, ".eqx")
        if found is None:
            return None
        payload, meta, path = found
        leaves, treedef = jtu.tree_flatten(like)
        if meta.get("kind") != "loop" or meta.get("num_leaves") != len(leaves):
            raise CheckpointError(
                f"checkpoint {path} does not match loop {name!r} of this run "
                f"({meta.get('num_leaves')} leaves on disk, {len(leaves)} in the state)"
            )
        buf = io.BytesIO(payload)
        out = []
        try:
            for i, (x, shape, placement) in enumerate(
                zip(leaves, meta["shapes"], meta["placements"], strict=True)
            ):
                if not _is_array_leaf(x):
                    out.append(x)
                    continue
                value = np.load(buf, allow_pickle=False)
                if list(value.shape) != shape or list(np.shape(x)) != shape:
                    raise CheckpointError(
                        f"checkpoint {path} does not match loop {name!r} of this run: leaf {i} "
                        f"has shape {tuple(value.shape)} on disk, {np.shape(x)} in the state"
                    )
                out.append(_place(value, placement, x, mesh))
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - any decoding failure means a bad file
            raise CheckpointError(
                f"checkpoint {path} is corrupt ({type(e).__name__}: {e}); delete it or start "
                "over with --force"
            ) from e
        return meta, jtu.tree_unflatten(treedef, out)

    # ---- stages ------------------------------------------------------------------------------

    def save_stage(self, name: str, value: Any) -> None:
        """Save a stage result (host numpy leaves); only the writer writes."""
        if not self.writer:
            return
        try:
            payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(
                f"ctx.stage({name!r}) returned a value that cannot be checkpointed "
                f"({type(e).__name__}: {e}); return arrays, numbers, lists, tuples or dicts"
            ) from e
        self._write(name, ".pkl", payload, {"kind": "stage"})

    def load_stage(self, name: str) -> tuple[bool, Any]:
        """(True, value) for a saved stage, (False, None) if absent."""
        found = self._read(name, ".pkl")
        if found is None:
            return False, None
        payload, meta, path = found
        try:
            if meta.get("kind") != "stage":
                raise ValueError(f"kind {meta.get('kind')!r} is not 'stage'")
            return True, pickle.loads(payload)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(
                f"checkpoint {path} is corrupt ({type(e).__name__}: {e}); delete it or start "
                "over with --force"
            ) from e

    # ---- files -------------------------------------------------------------------------------

    def _write(self, name: str, suffix: str, payload: bytes, meta: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = {**meta, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
        atomic_write(self.directory / f"{name}{suffix}", payload)
        atomic_write(self.directory / f"{name}.json", json.dumps(meta, indent=1))

    def _read(self, name: str, suffix: str) -> tuple[bytes, dict, pathlib.Path] | None:
        data_path = self.directory / f"{name}{suffix}"
        meta_path = self.directory / f"{name}.json"
        if not data_path.exists() and not meta_path.exists():
            return None
        hint = "delete it or start over with --force"
        if not meta_path.exists():
            raise CheckpointError(f"checkpoint {data_path} has no {meta_path.name}; {hint}")
        if not data_path.exists():
            raise CheckpointError(f"checkpoint {meta_path} has no {data_path.name}; {hint}")
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f"checkpoint {meta_path} is corrupt ({e}); {hint}") from e
        payload = data_path.read_bytes()
        if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
            raise CheckpointError(
                f"checkpoint {data_path} is corrupt (content hash does not match "
                f"{meta_path.name}); {hint}"
            )
        return payload, meta, data_path
