"""Each job's effects happen once: leases fence starts and ends, recovery re-queues each abandoned job once.

In-process workers against a real Redis, with the faults made by hand at the exact moment that matters
(a lease lapsing, an execution expiring), so no assertion depends on timing.
"""

from __future__ import annotations

import threading

import pytest
import torch
from rq.job import Job as RQJob
from rq.results import Result
from rq.serializers import JSONSerializer

from latentq import Client
from latentq.errors import JobConflict
from latentq.models.loader import load_model
from latentq.models.registry import load_registry
from latentq.state import keys
from latentq.state.lifecycle import Ending, end_jobs
from latentq.store import LocalStore
from latentq.worker import DecodeWorker
from latentq.worker.reliable_queue import ReliableQueue

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def make_worker(models_file, redis_conn, tmp_path):
    model = load_model(load_registry(models_file).get("taef2"), "cpu")
    made = []

    def make(name: str) -> DecodeWorker:
        worker = DecodeWorker({"taef2": model}, redis_conn, LocalStore(tmp_path / "store"), name=name, max_wait_ms=0)
        worker.register_birth()
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.finisher.close()


def pop_and_start(worker: DecodeWorker):
    job, queue = ReliableQueue.dequeue_any(worker.model_queues("taef2"), None, connection=worker.connection,
                                           serializer=JSONSerializer)  # fmt: skip
    return worker.take(job, queue), queue


def successes(connection, job_id: str) -> int:
    job = RQJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
    return sum(1 for result in job.results() if result.type == Result.Type.SUCCESSFUL)


def finish(worker: DecodeWorker, batch) -> list[bool]:
    endings = [Ending(item.job, "finished", item.queue, item.execution, item.token, result={"results": []})
               for item in batch.items]  # fmt: skip
    return end_jobs(worker.connection, endings, worker=worker)


def test_a_worker_whose_lease_lapsed_cannot_finish_the_job_that_another_worker_then_finishes_once(
        env, redis_conn, make_worker):  # fmt: skip
    job = Client().submit(torch.randn(32, 4, 4), model="taef2")
    frozen, other = make_worker("frozen"), make_worker("other")
    batch, queue = pop_and_start(frozen)
    assert [j.id for j in batch.jobs] == [job.id]
    done_messages = redis_conn.pubsub()
    done_messages.subscribe(keys.job_done_channel(job.id))

    # The frozen worker misses its heartbeats: its lease lapses, RQ's cleanup finds its execution expired.
    redis_conn.delete(keys.lease_key(job.id))
    frozen.upkeep.renew()
    assert frozen.active.is_lost(job.id) and job.id not in frozen.active
    queue.started_job_registry.cleanup(timestamp=2**40)  # far future: every execution counts as expired
    assert redis_conn.lrange(queue.key, 0, -1) == [job.id.encode()]  # re-queued, once

    rerun, _ = pop_and_start(other)
    assert finish(other, rerun) == [True]
    assert finish(frozen, batch) == [False]  # it wakes up and tries: refused

    assert successes(redis_conn, job.id) == 1
    assert Client().job_info(job.id).status.value == "finished"
    messages = []
    while (message := done_messages.get_message(timeout=0.2)) is not None:
        messages.append(message)
    assert [m["data"] for m in messages if m["type"] == "message"] == [b"finished"]


def test_a_frozen_worker_cannot_start_a_job_recovery_gave_to_another_worker(env, redis_conn, make_worker):
    job = Client().submit(torch.randn(32, 4, 4), model="taef2")
    frozen, other = make_worker("frozen"), make_worker("other")
    popped, queue = ReliableQueue.dequeue_any(frozen.model_queues("taef2"), None, connection=redis_conn,
                                              serializer=JSONSerializer)  # fmt: skip
    redis_conn.delete(keys.lease_key(job.id))  # frozen between its pop and its start, past the lease
    assert ReliableQueue.requeue_orphans(queue, redis_conn) == 1
    batch, _ = pop_and_start(other)
    assert [j.id for j in batch.jobs] == [job.id]

    late = frozen.intake.take(popped, queue)  # it wakes up and starts what it popped

    assert late.jobs == []
    assert redis_conn.hget(f"rq:job:{job.id}", "worker_name") == b"other"
    assert finish(other, batch) == [True] and successes(redis_conn, job.id) == 1


def test_recovery_requeues_each_abandoned_job_once_however_many_workers_run_it(env, redis_conn, make_worker):
    job = Client().submit(torch.randn(32, 4, 4), model="taef2")
    dead = make_worker("dead")
    batch, queue = pop_and_start(dead)
    retries = batch.jobs[0].retries_left
    # The worker dies: its lease lapses and its execution's heartbeat expires (score 0: long ago).
    redis_conn.delete(keys.lease_key(job.id))
    member = redis_conn.zrange(queue.started_job_registry.key, 0, -1)[0]
    redis_conn.zadd(queue.started_job_registry.key, {member: 0})
    survivors = [make_worker(f"survivor-{i}") for i in range(4)]

    threads = [threading.Thread(target=worker.upkeep.recover_abandoned) for worker in survivors for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert redis_conn.lrange(queue.key, 0, -1) == [job.id.encode()]
    assert RQJob.fetch(job.id, connection=redis_conn, serializer=JSONSerializer).retries_left == retries - 1


def test_a_popped_job_whose_worker_died_before_starting_it_is_back_once_its_lease_lapses(env, redis_conn,
                                                                                          make_worker):  # fmt: skip
    first, second = Client().submit_many(torch.randn(2, 32, 4, 4), model="taef2")
    survivor = make_worker("survivor")
    popped, queue = ReliableQueue.dequeue_any(survivor.model_queues("taef2"), None, connection=redis_conn,
                                              serializer=JSONSerializer)  # fmt: skip
    assert popped.id == first.id
    survivor.upkeep.recover_abandoned()
    assert redis_conn.lrange(queue.key, 0, -1) == [second.id.encode()]  # leased: its popper may still start it

    redis_conn.delete(keys.lease_key(first.id))  # the popper died: the lease lapses (at most 3 heartbeats)
    redis_conn.delete(keys.recovery_lock(queue.name))
    survivor.upkeep.recover_abandoned()

    assert redis_conn.lrange(queue.key, 0, -1) == [first.id.encode(), second.id.encode()]  # back at the head
    assert redis_conn.llen(queue.intermediate_queue_key) == 0


def test_cancel_and_start_exclude_each_other(env, redis_conn, make_worker):
    client = Client()
    taken, abandoned = client.submit_many(torch.randn(2, 32, 4, 4), model="taef2")
    worker = make_worker("w")
    worker.max_batch = 1  # one job per take: the other stays queued
    popped, queue = ReliableQueue.dequeue_any(worker.model_queues("taef2"), None, connection=redis_conn,
                                              serializer=JSONSerializer)  # fmt: skip
    with pytest.raises(JobConflict):  # a worker holds it: it will run
        client.cancel(taken.id)
    assert [j.id for j in worker.intake.take(popped, queue).jobs] == [taken.id]

    popped, queue = ReliableQueue.dequeue_any(worker.model_queues("taef2"), None, connection=redis_conn,
                                              serializer=JSONSerializer)  # fmt: skip
    redis_conn.delete(keys.lease_key(abandoned.id))  # its popper froze past the lease: cancel wins
    assert client.cancel(abandoned.id).status.value == "canceled"
    assert worker.intake.take(popped, queue).jobs == []  # the late start is refused
    assert client.job_info(abandoned.id).status.value == "canceled"
    assert not redis_conn.exists(keys.latent_key(abandoned.id))


def test_a_pop_never_takes_over_a_lease_another_pop_holds(env, redis_conn, make_worker):
    job = Client().submit(torch.randn(32, 4, 4), model="taef2")
    holder, other = make_worker("holder"), make_worker("other")
    popped, queue = ReliableQueue.dequeue_any(holder.model_queues("taef2"), None, connection=redis_conn,
                                              serializer=JSONSerializer)  # fmt: skip
    redis_conn.lpush(queue.key, job.id)  # a second copy in the queue (a recovery that raced the pop)

    assert ReliableQueue.pop_many(other.model_queues("taef2"), 8, redis_conn, serializer=JSONSerializer) == []

    assert redis_conn.get(keys.lease_key(job.id)).decode() == popped.lease_token
    batch = holder.take(popped, queue)
    assert [j.id for j in batch.jobs] == [job.id]
    assert finish(holder, batch) == [True]
    # the copy the other pop left behind is recovery's to drop, once the holder has ended the job
    holder.upkeep.recover_abandoned()
    assert redis_conn.llen(queue.intermediate_queue_key) == 0 and redis_conn.llen(queue.key) == 0


def test_recovery_leaves_a_blocking_pop_the_moment_between_its_move_and_its_lease(env, redis_conn, make_worker,
                                                                                   monkeypatch):  # fmt: skip
    from latentq.worker import reliable_queue

    job = Client().submit(torch.randn(32, 4, 4), model="taef2")
    worker = make_worker("w")
    queue = worker.model_queues("taef2")[-1]
    redis_conn.lmove(queue.key, queue.intermediate_queue_key)  # a BLMOVE whose lease is not taken yet
    # ... and takes it while recovery waits for its second look
    monkeypatch.setattr(reliable_queue.time, "sleep", lambda _s: redis_conn.set(keys.lease_key(job.id), "pop"))

    assert ReliableQueue.requeue_orphans(queue, redis_conn) == 0
    assert redis_conn.llen(queue.key) == 0 and redis_conn.lrange(queue.intermediate_queue_key, 0, -1) == [
        job.id.encode()]


def test_a_job_requeued_while_its_dead_workers_lease_still_holds_is_not_lost(env, redis_conn, make_worker):
    """RQ scores executions in whole seconds: its cleanup can re-queue a job a moment before the lease lapses."""
    job = Client().submit(torch.randn(32, 4, 4), model="taef2")
    dead, other = make_worker("dead"), make_worker("other")
    batch, queue = pop_and_start(dead)
    member = redis_conn.zrange(queue.started_job_registry.key, 0, -1)[0]
    redis_conn.zadd(queue.started_job_registry.key, {member: 0})  # its execution expired, its lease not yet
    other.upkeep.recover_abandoned()
    assert redis_conn.lrange(queue.key, 0, -1) == [job.id.encode()]
    assert ReliableQueue.pop_many(other.model_queues("taef2"), 8, redis_conn, serializer=JSONSerializer) == []

    redis_conn.delete(keys.lease_key(job.id))  # ... and now the lease lapses too
    redis_conn.delete(keys.recovery_lock(queue.name))
    other.upkeep.recover_abandoned()

    rerun, _ = pop_and_start(other)
    assert [j.id for j in rerun.jobs] == [job.id]
    assert finish(other, rerun) == [True] and successes(redis_conn, job.id) == 1


def test_a_blocking_pop_claims_its_lease_in_its_start_unless_another_pop_holds_it(env, redis_conn, make_worker):
    first, second = Client().submit_many(torch.randn(2, 32, 4, 4), model="taef2")
    worker = make_worker("w")
    worker.max_batch = 1
    queues = worker.model_queues("taef2")

    popped, queue = ReliableQueue._take(queues[-1], 1, redis_conn, None, JSONSerializer)  # the blocking pop
    assert popped.id == first.id and not redis_conn.exists(keys.lease_key(first.id))  # BLMOVE: no lease yet
    assert [j.id for j in worker.take(popped, queue).jobs] == [first.id]
    assert redis_conn.get(keys.lease_key(first.id)).decode() == popped.lease_token

    popped, queue = ReliableQueue._take(queues[-1], 1, redis_conn, None, JSONSerializer)
    redis_conn.set(keys.lease_key(second.id), "another pop")  # a copy of it another worker took meanwhile
    assert worker.take(popped, queue).jobs == []
    assert redis_conn.hget(f"rq:job:{second.id}", "status") == b"queued"
