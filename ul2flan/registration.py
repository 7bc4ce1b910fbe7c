"""Adding seqio tasks and mixtures without ever replacing one that ul2flan did not register.

Re-registering a name ul2flan registered itself (a gin entry point called again with new files)
replaces it when asked and is an error otherwise; a name a user registered is never replaced, even
when asked: that is an error naming the clash.
"""

from __future__ import annotations

from typing import Any

import seqio

_OURS: dict[str, Any] = {}  # name -> the task or mixture object ul2flan registered


def _make_room(kind: str, name: str, registry, replace: bool) -> None:
  if name not in registry.names():
    return
  if registry.get(name) is not _OURS.get(name):
    raise ValueError(
        f"a seqio {kind} named {name!r} is already registered, and not by ul2flan; ul2flan will not "
        f"replace it. Rename one of the two (or remove yours before importing ul2flan_tasks).")
  if not replace:
    raise ValueError(f"{kind} {name!r} is already registered; pass overwrite/replace=True to "
                     f"rebuild it")
  registry.remove(name)


def add_task(name: str, *, replace: bool = False, **task_kwargs) -> seqio.Task:
  """Registers a task; one ul2flan registered before under that name is replaced if asked."""
  _make_room("task", name, seqio.TaskRegistry, replace)
  task = seqio.TaskRegistry.add(name, **task_kwargs)
  _OURS[name] = task
  return task


def add_mixture(name: str, tasks, *, replace: bool = False, **mixture_kwargs) -> seqio.Mixture:
  """Registers a mixture; one ul2flan registered before under that name is replaced if asked."""
  _make_room("mixture", name, seqio.MixtureRegistry, replace)
  mixture = seqio.MixtureRegistry.add(name, tasks, **mixture_kwargs)
  _OURS[name] = mixture
  return mixture


def registered_by_ul2flan(name: str) -> bool:
  return name in _OURS
