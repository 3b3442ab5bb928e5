"""The playground's agent turn: one answer of a conversation with tools, run on the `agent` queue
(a threads-pool worker, so a chat never waits behind training).

execute  refuses up front when the user's playground quota is used up (the answer says why), then
         runs the core's loop (workers/core/agents/job.py) with what the job's stored parameters
         never hold: the administrator's HTTP allowlist and the broker URL the deployment is
         called through. Each step is logged as {"agent_step": ...}, which the conversation's
         socket relays from the job's live events.
record   in the SUCCEEDED transaction: the answer, the trace, its status and the tokens of every
         model call, counted against the user's playground key (as /v1 counts a key's).
run      a turn that failed or was cancelled settles its answer too (failed / stopped, with the
         steps it logged), so the page never waits on a dead job."""
from __future__ import annotations


from django.conf import settings

from apps.jobs.models import JobStatus
from apps.playground import services
from apps.playground.models import Message, MessageStatus
from puyu_site.celery import app
from workers.core.agents.job import run_agent_turn
from workers.core.kinds import CORE_JOBS
from workers.core.specs import build_spec
from workers.tasks.base import JobTask


class QuotaUsedUp(Exception):
    """The user's daily playground tokens are spent; the answer says so."""


class AgentTurnTask(JobTask):
    abstract = True

    @staticmethod
    def turn_message(job) -> Message | None:
        """The answer this job writes, read once per attempt (execute and record share the job
        object), with what its end event shows."""
        if not hasattr(job, "_turn_message"):
            job._turn_message = Message.objects.select_related(*services.TURN_RELATIONS).filter(job=job).first()
        return job._turn_message

    @classmethod
    def turn_owner(cls, job):
        """The job's owner, as the turn's read has it (only a conversation's owner sends to it)."""
        message = cls.turn_message(job)
        return message.conversation.owner if message and message.conversation.owner_id == job.owner_id else job.owner

    def execute(self, job, reporter):
        message = self.turn_message(job)
        refusal = services.quota_refusal(self.turn_owner(job))
        if refusal:
            if message is not None:
                services.finish_turn(message.pk, status=MessageStatus.FAILED, error=refusal, turn=message)
            raise QuotaUsedUp(refusal)
        # The broker URL and the admin's HTTP allowlist reach the core at run time only.
        spec = build_spec(CORE_JOBS[job.kind].spec_class, job.params)
        return run_agent_turn(spec, reporter, http_allowlist=settings.PLAYGROUND_HTTP_ALLOWLIST,
                              redis_url=settings.REDIS_URL)

    def record(self, job, result):
        message = self.turn_message(job)
        trace = result.get("trace") or []
        usage = services.trace_usage(trace)
        if message is not None:
            failed = result.get("stopped") == "model_error"
            settled = services.finish_turn(message.pk, status=MessageStatus.FAILED if failed else MessageStatus.DONE,
                                           content=str(result.get("answer") or ""), trace=trace, usage=usage,
                                           error=str(result.get("answer") or "") if failed else "", turn=message)
            if settled and usage["total_tokens"] and message.deployment_id:  # once: a duplicate finds it settled
                services.record_usage(self.turn_owner(job), message.deployment_id, usage)
        return {"stopped": result.get("stopped"), "turns": result.get("turns"), "usage": usage,
                "message_id": message.pk if message else None}

    def run(self, job_id: int):
        status = super().run(job_id)
        if status in (JobStatus.FAILED, JobStatus.CANCELLED):
            for message in Message.objects.filter(job_id=job_id, status=MessageStatus.STREAMING):
                services.reconcile(message)
        return status


@app.task(base=AgentTurnTask, bind=True, name="playground.agent_turn")
def agent_turn(self, job_id: int):
    return AgentTurnTask.run(self, job_id)
