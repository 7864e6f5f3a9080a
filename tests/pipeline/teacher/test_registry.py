"""The per-process registry: every teacher stage of a worker process shares one client, index and budget."""

import pickle

from pipeline.stages.teacher import TeacherPolicy
from pipeline.teacher.config import TeacherConfig
from pipeline.teacher.cost import PriceTable
from pipeline.teacher.registry import close_clients, shared_budget, shared_client


def test_every_stage_of_a_process_shares_one_client_and_budget():
    """Each Beam stage unpickles its own copy of the config: equal price tables must key the same client."""
    config = TeacherConfig("http://127.0.0.1:9/v1", "gpt-4o-mini", prices=PriceTable.from_flag("m=1:2"))
    cot, verifier = (pickle.loads(pickle.dumps(config)) for _ in range(2))
    assert cot.prices == verifier.prices and repr(cot) == repr(verifier)
    policy = TeacherPolicy(max_requests=10)
    try:
        assert shared_client(cot) is shared_client(verifier)
        assert shared_budget(cot, policy) is shared_budget(verifier, policy)
    finally:
        close_clients()
