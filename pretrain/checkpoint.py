"""Orbax checkpoints of a run: train state (params, optimiser state, step) + the data iterator.

Saving is asynchronous: `save` returns once device arrays are copied to host memory, and the
files are written in the background; `wait` blocks until every pending save is on disk.
"""

from __future__ import annotations

from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpointer"]


class Checkpointer:
    """Keeps the newest `keep` checkpoints under `directory/<step>/{state,data_iter}`."""

    def __init__(self, directory: str | Path, keep: int = 3, use_async: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=use_async
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, data_iter) -> None:
        """Saves `state` (a pytree of jax arrays) and `data_iter`'s position as `step`."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data_iter=grain.checkpoint.CheckpointSave(data_iter),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state, data_iter=None):
        """Restores checkpoint `step` into the shapes/dtypes/shardings of `abstract_state`.

        `data_iter`, if given, is moved in place to the saved position. Returns the state.
        """
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        return restored["state"]

    def restore_params(self, step: int | None = None):
        """Parameters only (for sampling), as host-local arrays on the default device."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        meta = self._manager.item_metadata(step)["state"]
        abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta["params"])
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    {"params": abstract},
                    restore_args=jax.tree.map(
                        lambda _: ocp.ArrayRestoreArgs(), {"params": abstract}
                    ),
                    partial_restore=True,
                )
            ),
        )
        return restored["state"]["params"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
