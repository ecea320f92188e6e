"""Idempotent registration of tasks and mixtures.

Tasks are named as `spt_jax.eval_protocol.task_name` writes them.
`add_task` / `add_mixture` replace an existing registration of the same name,
so importing (or reloading) the task modules twice is harmless.
"""

from typing import Any, Sequence, Union

import seqio


def add_task(name: str, **kwargs: Any) -> seqio.Task:
  """`seqio.TaskRegistry.add`, replacing any task of the same name."""
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **kwargs)


def add_mixture(
    name: str,
    tasks: Sequence[Union[str, tuple[str, float]]],
    default_rate: Any = None,
) -> seqio.Mixture:
  """`seqio.MixtureRegistry.add`, replacing any mixture of the same name."""
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, tasks, default_rate=default_rate)
