"""A run in --teacher_mode batch (the OpenAI Batch API, half price): before the graph, collect the answers of
batches submitted by earlier runs into the journal; after it, submit the requests the graph left pending and
say how many are in progress. Rerunning the same command continues until nothing is pending."""

from __future__ import annotations

from apache_beam.io.filesystems import FileSystems

from pipeline.outputs import BATCH_STATE_DIR
from pipeline.plan import RunPlan
from pipeline.teacher.batch import BatchJobs
from pipeline.teacher.budget import Budget
from pipeline.teacher.cost import BATCH_DISCOUNT


class BatchRun:
    """The Batch API side of one run (state kept under OUTPUT_DIR/batches/state)."""

    def __init__(self, plan: RunPlan):
        self.plan = plan
        self.jobs = BatchJobs(plan.teacher, FileSystems.join(plan.output_dir, BATCH_STATE_DIR))

    @classmethod
    def start(cls, plan: RunPlan) -> BatchRun | None:
        """None unless the plan calls the teacher in batch mode; else collects what finished since the last run."""
        if plan.policy.mode != "batch" or plan.dry_run:
            return None
        run = cls(plan)
        collected = run.jobs.collect()
        print(f"batch: {collected['collected']} answers collected into the journal, "
              f"{collected['in_progress_batches']} batches still in progress")
        return run

    def submit(self) -> dict:
        """Submit the pending requests (within the run's budget, at the batch discount); stats.json's 'batch'."""
        policy, teacher = self.plan.policy, self.plan.teacher
        budget = (Budget(policy.max_requests, policy.max_cost_usd, teacher.prices, teacher.model,
                         discount=BATCH_DISCOUNT) if policy.budgeted else None)
        submitted = self.jobs.submit_pending(FileSystems.join(policy.pending_dir, "*.jsonl"), budget)
        waiting = self.jobs.in_progress()
        if waiting:
            print(f"batch: {submitted['submitted_requests']} requests submitted in {submitted['batches']} new "
                  f"batches; {waiting} requests in progress. Rerun the same command to collect them and continue.")
        return {"submitted": submitted, "in_progress": waiting}
