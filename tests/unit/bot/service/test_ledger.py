"""A job's one lifecycle and its one writer (the ledger), and the two promises about imports."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from bot.core.job import IllegalTransition, Job, JobState, TRANSITIONS
from bot.service.ledger import Ledger
from bot.store.job_store import JobStore
from nst_core.params import StylizeParams
from nst_core.pool.base import Failed, Finished

pytestmark = pytest.mark.timeout(60)

from conftest import REPO  # noqa: E402
FINISHED = Finished("x", b"\x89PNG result", {"final": {}, "history": []}, (), "cpu0", 1.0)


def job(job_id: str = "0123456789") -> Job:
    return Job(job_id=job_id, user_id=1, channel_id=2, guild_id=3, application_id=4, interaction_token="t",
               token_created_at=0.0, upload_limit=1 << 20, params=StylizeParams(preset="fast"), content=b"c",
               style=b"s", style_label="s.png")


def test_every_state_is_reachable_and_ended_states_are_final():
    reached = {JobState.WAITING}
    frontier = [JobState.WAITING]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reached:
                reached.add(nxt)
                frontier.append(nxt)
    assert reached == set(JobState)
    assert {s for s in JobState if s.ended} == {JobState.DELIVERED, JobState.UNDELIVERABLE, JobState.NOTIFIED,
                                                JobState.UNNOTIFIED, JobState.CANCELLED}


async def test_a_job_lives_through_the_ledger_in_memory_and_in_the_store(tmp_path):
    store = JobStore(tmp_path / "db.sqlite3", tmp_path / "spool")
    await store.open()
    try:
        ledger, j = Ledger(store), job()
        await ledger.accept(j)
        ledger.job_started(j, "cpu0")
        ledger.job_finished(j, FINISHED)
        await ledger.save_result(j, FINISHED)
        await ledger.sending(j, "interaction")
        await ledger.sent(j, "interaction", 42)
        await store.flush()
        row = await store.get(j.job_id)
        assert (j.state, row.state, row.route, row.message_id, row.attempts) == (
            JobState.DELIVERED, JobState.DELIVERED, "interaction", 42, 1)

        other = job("abcdefabcd")
        await ledger.accept(other)
        ledger.job_failed(other, Failed(other.job_id, "It broke.", "error"))
        await ledger.sending(other, "channel")
        await ledger.unsent(other)
        await store.flush()
        assert (await store.get(other.job_id)).state is JobState.UNNOTIFIED
    finally:
        await store.close()


async def test_a_whole_line_moving_is_one_write_and_its_places_survive_for_a_restart(tmp_path):
    # A line of N waiting jobs moves on every start; one database write per job made N writes
    # per change, and with 1,000 servers the results waited behind them for minutes.
    store = JobStore(tmp_path / "db.sqlite3", tmp_path / "spool")
    await store.open()
    try:
        ledger, jobs = Ledger(store), [job(f"{i:010x}") for i in range(300)]
        for j in jobs:
            await ledger.accept(j)
        writes = []
        submit = store._submit
        store._submit = lambda fn, *args: (writes.append(fn), submit(fn, *args))[1]  # type: ignore[method-assign]
        for place, j in enumerate(reversed(jobs), 1):
            ledger.job_waiting(j, place, None)
        assert [j.position for j in jobs[:2]] == [300, 299]  # known at once in memory
        await asyncio.sleep(0)  # the end of this turn of the loop
        assert len(writes) == 1
        await store.flush()
        assert [(await store.get(j.job_id)).position for j in (jobs[0], jobs[-1])] == [300, 1]
    finally:
        await store.close()


async def test_an_illegal_move_is_a_bug_that_raises_not_a_silent_overwrite():
    ledger, j = Ledger(), job()
    ledger.job_failed(j, Failed(j.job_id, "The job was cancelled.", "cancelled"))
    assert j.state is JobState.CANCELLED
    with pytest.raises(IllegalTransition, match="cancelled -> running"):
        ledger.job_started(j, "cpu0")
    with pytest.raises(IllegalTransition, match="cancelled -> done"):
        await ledger.save_result(j, FINISHED)
    done = job("abcdefabcd")
    with pytest.raises(IllegalTransition, match="waiting -> notified"):  # nothing ran, nothing failed
        await ledger.sent(done, "channel", 1)
    assert done.state is JobState.WAITING


def _writes_outside_the_ledger() -> list[str]:
    """Assignments to ``.state`` and calls that write a job's record, outside bot/jobs.py and bot/store.py."""
    found = []
    for path in sorted((REPO / "bot").glob("*.py")):
        if path.name in ("jobs.py", "store.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for t in ast.walk(target):
                        if isinstance(t, ast.Attribute) and t.attr in ("state", "cancelled_by", "attempts",
                                                                       "restarts", "started_at", "finished_at"):
                            found.append(f"{path.name}:{node.lineno} sets .{t.attr}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "update", "note", "note_restored", "save_result", "accept", "discard"):
                owner = node.func.value
                if isinstance(owner, ast.Attribute) and owner.attr == "store" or \
                        isinstance(owner, ast.Name) and owner.id == "store":
                    found.append(f"{path.name}:{node.lineno} calls store.{node.func.attr}")
    return found


def test_only_the_ledger_writes_a_jobs_state():
    assert _writes_outside_the_ledger() == []


def test_the_bot_process_never_imports_tensorflow_keras_or_ray():
    # (with [pool] backend = "ray" it imports Ray, once the pool starts: that is the point of it)
    script = (
        "import sys\n"
        "from bot.config_loading import load_config\n"
        "import bot.app.run, bot.__main__\n"
        "bot.app.run.make_pool(load_config(None, env={}))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'ray')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_engine_never_imports_discord_or_the_bot():
    script = ("import sys, nst_core, nst_core.cli, nst_core.pool, nst_core.pool.local, nst_core.images\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('discord', 'bot')))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


async def test_a_database_made_by_the_previous_store_is_read_with_every_job_in_its_new_state(tmp_path):
    # tests/fixtures/store_v1 was written by the job store of commit e59bfb6 (make_store_v1.py).
    import shutil

    shutil.copytree(REPO / "tests" / "fixtures" / "store_v1", tmp_path / "data")
    store = JobStore(tmp_path / "data" / "jobs.sqlite3", tmp_path / "data" / "spool")
    await store.open()
    try:
        ids = [f"{n:010d}" for n in range(1, 9)]
        assert sum((await store.counts()).values()) == len(ids)  # no other job came from the old file
        states = {job_id: (await store.get(job_id)).state for job_id in ids}
        assert states == {"0000000001": JobState.WAITING, "0000000002": JobState.RUNNING,
                          "0000000003": JobState.DONE, "0000000004": JobState.DELIVERING,
                          "0000000005": JobState.FAILED, "0000000006": JobState.NOTIFYING,
                          "0000000007": JobState.CANCELLED, "0000000008": JobState.DELIVERED}
        waiting = await store.get("0000000001")
        assert waiting.params.seed == 1 and waiting.params.strength == 1.5 and waiting.preset == "fast"
        assert await store.load_inputs("0000000001") == (b"content-1", b"style-1", b"")
        assert (await store.load_result("0000000004")).image_png == b"\x89PNG old result"
        assert (await store.get("0000000006")).route == "dm"
    finally:
        await store.close()
