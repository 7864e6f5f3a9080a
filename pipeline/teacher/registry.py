"""What a worker process shares between the DoFn instances of every teacher stage: one client per config (so
their calls share its limits and journal), one journal index per journal folder, one spend budget per config
and limits. Beam-free; keyed by repr, because each stage unpickles its own copy of an equal config."""

from __future__ import annotations

import atexit
import threading
from typing import Protocol

from pipeline.teacher.budget import Budget
from pipeline.teacher.client import TeacherClient
from pipeline.teacher.config import TeacherConfig
from pipeline.teacher.journal import JournalIndex
from pipeline.teacher.process import ProcessClient
from pipeline.teacher.protocol import Teacher

_LOCK = threading.Lock()
_CLIENTS: dict[str, Teacher] = {}
_INDEXES: dict[str, JournalIndex] = {}
_BUDGETS: dict[str, Budget] = {}


class SpendLimits(Protocol):
    """What a budget is made from besides the config (the stages' TeacherPolicy); its repr is part of the key."""

    @property
    def max_requests(self) -> int | None: ...

    @property
    def max_cost_usd(self) -> float | None: ...


def shared_client(config: TeacherConfig) -> Teacher:
    """This process's client for `config`: in this process, or in a child of its own (config.own_process)."""
    key = repr(config)
    with _LOCK:
        if not _CLIENTS:
            atexit.register(close_clients)
        client = _CLIENTS.get(key)
        if client is None or client.closed:
            client = _CLIENTS[key] = ProcessClient(config) if config.own_process else TeacherClient(config)
        return client


def shared_index(journal_dir: str) -> JournalIndex:
    """This process's index of `journal_dir`, brought up to date with the segments written since last asked."""
    with _LOCK:
        index = _INDEXES.setdefault(journal_dir, JournalIndex(journal_dir))
    index.refresh()
    return index


def shared_budget(config: TeacherConfig, limits: SpendLimits) -> Budget:
    """One budget per worker process, configuration and limits (each process enforces its own copy)."""
    key = repr((config, limits))
    with _LOCK:
        if key not in _BUDGETS:
            _BUDGETS[key] = Budget(limits.max_requests, limits.max_cost_usd, config.prices, config.model,
                                   discount=config.price_discount)
        return _BUDGETS[key]


def close_clients() -> None:
    """Close every client of this process: drains, flushes the journal, closes connections."""
    with _LOCK:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for client in clients:
        client.close()
