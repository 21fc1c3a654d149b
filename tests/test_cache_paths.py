"""Caching on every submit path (SPEC 6): map, starmap, chunks and the canvas reuse cached
members one by one; cache_ignore; task.cache_clear(); app.purge(task_name=); the group view's
count of reused members. Real App, real store in tmp_path. (Resuming a map after its kernel
was killed is in tests/integration/test_cache_resume.py.)"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
from helpers import stored_count

import nbtasks
from nbtasks import TaskStatus


class Calls:
    """A thread-safe count of the calls a task really made, per argument."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[object] = Counter()

    def add(self, what: object) -> None:
        with self._lock:
            self.counts[what] += 1

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())


def _cache_entries(store: Path) -> int:
    other = nbtasks.App(store=store)
    try:
        rows = other.store.reader.rows(
            "SELECT count(*) FROM Cache WHERE key >= 'k:' AND key < 'k;'", []
        )
        return int(rows[0][0])
    finally:
        other.shutdown()


@pytest.fixture
def calls() -> Calls:
    return Calls()


def test_map_reuses_the_cached_items_and_runs_only_the_new(app: nbtasks.App, calls: Calls) -> None:
    @app.task(cache=True)
    def sq(x: int) -> int:
        calls.add(x)
        return x * x

    earlier = {x: sq.delay(x) for x in (0, 1, 2)}
    for r in earlier.values():
        r.wait(10)
    g = sq.map(range(5))
    assert g.get(10) == [0, 1, 4, 9, 16]
    for x in (0, 1, 2):
        assert g.results[x].id == earlier[x].id
        assert g.results[x].cached is True
    assert [r.cached for r in g.results[3:]] == [False, False]
    assert calls.counts == Counter({0: 1, 1: 1, 2: 1, 3: 1, 4: 1})
    # The group record lists every member, reused ones included: it reads back whole.
    again = app.group_result(g.id)
    assert [r.id for r in again.results] == [r.id for r in g.results]
    assert again.get(10) == [0, 1, 4, 9, 16]
    assert g.completed_count() == 5


def test_a_map_submitted_twice_runs_once(app: nbtasks.App, calls: Calls) -> None:
    @app.task(cache=True)
    def inc(x: int) -> int:
        calls.add(x)
        return x + 1

    first = inc.map(range(20))
    assert first.get(10) == list(range(1, 21))
    second = inc.map(range(20))
    assert [r.id for r in second.results] == [r.id for r in first.results]
    assert all(r.cached for r in second.results)
    assert all(r.status is TaskStatus.SUCCESSFUL for r in second.results)  # at once
    assert calls.total() == 20


def test_the_same_item_twice_in_one_map_runs_once(app: nbtasks.App, calls: Calls) -> None:
    @app.task(cache=True)
    def f(x: int) -> int:
        calls.add(x)
        return -x

    g = f.map([7, 8, 7])
    assert g.get(10) == [-7, -8, -7]
    assert g.results[2].id == g.results[0].id and g.results[2].cached
    assert calls.counts == Counter({7: 1, 8: 1})


def test_starmap_and_chunks_reuse_cached_items(app: nbtasks.App, calls: Calls) -> None:
    @app.task(cache=True)
    def add(x: int, y: int) -> int:
        calls.add((x, y))
        return x + y

    first = add.starmap([(1, 2), (3, 4)])
    first.get(10)
    second = add.starmap([(1, 2), (3, 4), (5, 6)])
    assert second.get(10) == [3, 7, 11]
    assert [r.id for r in second.results[:2]] == [r.id for r in first.results]
    assert [r.cached for r in second.results] == [True, True, False]
    assert calls.total() == 3
    # A chunk's key is its whole list of calls: the same chunks hit, other chunks compute.
    c1 = add.chunks([(1, 1), (2, 2), (3, 3)], 2)
    assert c1.get(10) == [[2, 4], [6]]
    c2 = add.chunks([(1, 1), (2, 2), (3, 3), (4, 4)], 2)
    assert c2.get(10) == [[2, 4], [6, 8]]
    assert c2.results[0].id == c1.results[0].id and c2.results[0].cached
    assert c2.results[1].id != c1.results[1].id and not c2.results[1].cached
    assert calls.counts[(1, 1)] == 1 and calls.counts[(3, 3)] == 2


def test_group_members_reuse_cached_items(app: nbtasks.App, calls: Calls) -> None:
    @app.task(cache=True)
    def sq(x: int) -> int:
        calls.add(x)
        return x * x

    done = sq.delay(4)
    done.wait(10)
    g = nbtasks.group(sq.s(4), sq.s(5)).apply_async()
    assert g.get(10) == [16, 25]
    assert g.results[0].id == done.id and g.results[0].cached
    assert not g.results[1].cached
    assert app.group_result(g.id).get(10) == [16, 25]
    assert calls.counts == Counter({4: 1, 5: 1})


def test_a_chain_link_that_hits_feeds_the_next_link(app: nbtasks.App, calls: Calls) -> None:
    @app.task(cache=True)
    def double(x: int) -> int:
        calls.add(("double", x))
        return 2 * x

    @app.task(cache=True)
    def plus(x: int, y: int) -> int:
        calls.add(("plus", x, y))
        return x + y

    first = (double.s(3) | plus.s(1)).apply_async()
    assert first.get(10) == 7
    # Both links hit: the second's argument (the first's stored value) is known at submit.
    again = (double.s(3) | plus.s(1)).apply_async()
    assert again.cached and again.id == first.id
    assert again.get(10) == 7
    # The first link hits, the next is new: it gets the stored value as its first argument.
    other = (double.s(3) | plus.s(100)).apply_async()
    assert not other.cached and other.get(10) == 106
    assert calls.counts == Counter({("double", 3): 1, ("plus", 6, 1): 1, ("plus", 6, 100): 1})


def test_a_link_known_only_when_its_parent_ends_reuses_a_stored_result(
    app: nbtasks.App, calls: Calls
) -> None:
    """The parent is computed in this submit, so the link's call (its parent's value first) is
    known only when the parent ends: it is looked up then, and ends SUCCESSFUL with the stored
    value, without running; its handle keeps its own id and names the task it reused."""

    @app.task(cache=True)
    def inc(x: int) -> int:
        calls.add(("inc", x))
        return x + 1

    @app.task(cache=True)
    def square(x: int) -> int:
        calls.add(("square", x))
        return x * x

    earlier = square.delay(5)
    assert earlier.get(10) == 25
    link = (inc.s(4) | square.s()).apply_async()  # inc(4) is new; square(5) was computed
    assert link.get(10) == 25
    assert not link.cached and link.id != earlier.id
    assert link.status is TaskStatus.SUCCESSFUL
    assert link.metadata["cached_from"] == earlier.id
    assert calls.counts == Counter({("square", 5): 1, ("inc", 4): 1})
    # A link whose call has no result yet runs, and is found by the next submit.
    fresh = (inc.s(9) | square.s()).apply_async()
    assert fresh.get(10) == 100 and "cached_from" not in fresh.metadata
    again = square.delay(10)
    assert again.cached and again.id == fresh.id
    assert calls.counts[("square", 10)] == 1


def test_a_chord_body_waits_for_hits_as_done(app: nbtasks.App, calls: Calls) -> None:
    @app.task(cache=True)
    def sq(x: int) -> int:
        calls.add(x)
        return x * x

    @app.task
    def total(values: list[int]) -> int:
        return sum(values)

    sq.delay(1).wait(10)
    sq.delay(2).wait(10)
    all_hits = nbtasks.chord([sq.s(1), sq.s(2)], total.s()).apply_async()
    assert all_hits.get(10) == 5
    mixed = nbtasks.chord([sq.s(1), sq.s(3)], total.s()).apply_async()
    assert mixed.get(10) == 10
    header = mixed.parent
    assert isinstance(header, nbtasks.GroupResult)
    assert [r.cached for r in header.results] == [True, False]
    assert calls.counts == Counter({1: 1, 2: 1, 3: 1})


def test_a_mixed_map_is_one_transaction_and_a_failed_one_stores_nothing(
    app: nbtasks.App, store_path: Path
) -> None:
    @app.task(cache=True, executor="process")
    def ident(x: object) -> object:
        return x

    ident.map([1, 2]).get(60)
    app.store.flush()
    records, keys = stored_count(store_path), _cache_entries(store_path)
    assert (records, keys) == (2, 2)
    with pytest.raises(TypeError, match="pickled"):
        ident.map([1, 3, threading.Lock()])  # one hit, one new, one that cannot be pickled
    assert stored_count(store_path) == records  # nothing of it was stored
    assert _cache_entries(store_path) == keys
    mixed = ident.map([1, 3])
    assert mixed.get(60) == [1, 3]
    assert [r.cached for r in mixed.results] == [True, False]
    assert _cache_entries(store_path) == 3


def test_cache_ignore_leaves_arguments_out_of_the_key(app: nbtasks.App, calls: Calls) -> None:
    @app.task(cache=True, cache_ignore=("verbose",))
    def f(x: int, verbose: bool = False) -> int:
        calls.add(x)
        return x

    first = f.delay(1)
    first.wait(10)
    for again in (f.delay(1, True), f.delay(x=1, verbose=True), f.delay(1, verbose=False)):
        assert again.id == first.id and again.cached
    g = f.starmap([(1, True), (2, True)])
    assert g.results[0].id == first.id and g.get(10) == [1, 2]
    assert calls.counts == Counter({1: 1, 2: 1})
    # Per call, too: here `x` is ignored, so any x reuses the first run of that key.
    one = f.apply_async((5,), cache_ignore="x")
    one.wait(10)
    other = f.apply_async((6,), cache_ignore=("x",))
    assert other.id == one.id and other.cached


def test_cache_ignore_names_must_be_parameters(app: nbtasks.App) -> None:
    with pytest.raises(ValueError, match=r"cache_ignore names 'verbos'.*parameters are x, verbose"):

        @app.task(cache=True, cache_ignore=("verbos",))
        def f(x: int, verbose: bool = False) -> int:
            return x

    with pytest.raises(TypeError, match="cache_ignore must be argument names"):

        @app.task(cache=True, cache_ignore=(1,))
        def g(x: int) -> int:
            return x

    @app.task(cache=True)
    def h(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="cache_ignore names 'y'"):
        h.apply_async((1,), cache_ignore=("y",))
    assert app.results() == []


def test_cache_clear_forgets_every_reusable_result(
    app: nbtasks.App, store_path: Path, calls: Calls
) -> None:
    @app.task(cache=True)
    def sq(x: int) -> int:
        calls.add(x)
        return x * x

    @app.task(cache=True)
    def keep(x: int) -> int:
        return x

    old = sq.map(range(3))
    old.get(10)
    kept = keep.delay(1)
    kept.wait(10)
    assert sq.cache_clear() == 3
    assert sq.cache_clear() == 0
    again = sq.map(range(3))
    assert not any(r.cached for r in again.results)
    assert again.get(10) == [0, 1, 4]
    assert all(a.id != b.id for a, b in zip(again.results, old.results, strict=True))
    assert calls.total() == 6
    # The old results are still results, readable by id; the other task's cache is untouched.
    assert app.result(old.results[2].id).get(1) == 4
    assert keep.delay(1).id == kept.id


def test_cache_clear_drops_a_run_in_flight(app: nbtasks.App) -> None:
    gate = threading.Event()

    @app.task(cache=True)
    def slow(x: int) -> int:
        gate.wait(10)
        return x

    try:
        first = slow.delay(1)
        assert slow.delay(1).id == first.id
        assert slow.cache_clear() == 1
        second = slow.delay(1)
        assert second.id != first.id and not second.cached
    finally:
        gate.set()
    assert first.get(10) == 1 and second.get(10) == 1


def test_purge_by_task_name(app: nbtasks.App, store_path: Path) -> None:
    @app.task(cache=True)
    def a(x: int) -> int:
        return x

    @app.task(cache=True)
    def b(x: int) -> int:
        return x

    a.map(range(3)).get(10)
    kept = b.delay(1)
    kept.wait(10)
    with pytest.raises(TypeError, match="task_name must be"):
        app.purge(task_name=3)  # type: ignore[arg-type]
    assert app.purge(task_name="nope") == 0
    assert app.purge(task_name=a.name, status="FAILED") == 0
    assert app.purge(task_name=a.name) == 3
    assert [r.id for r in app.results()] == [kept.id]
    assert _cache_entries(store_path) == 1  # b's key only
    assert not a.delay(1).cached
    assert b.delay(1).id == kept.id


def test_purge_keeps_a_cache_key_that_a_newer_run_owns(app: nbtasks.App) -> None:
    @app.task(cache=True)
    def f(x: int) -> int:
        return x

    old = f.delay(1)
    old.wait(10)
    f.cache_clear()
    new = f.delay(1)
    new.wait(10)
    assert app.purge(older_than=0, task_name=f.name) == 2
    # Both records are gone; had the key survived the first deletion it would name a gone
    # task. Now: a fresh submit computes again, and its key is its own.
    fresh = f.delay(1)
    assert not fresh.cached and fresh.get(10) == 1
    assert f.delay(1).id == fresh.id


def test_the_group_view_says_how_many_were_reused(app: nbtasks.App) -> None:
    from nbtasks.views.format import counts_text, group_html, group_line
    from nbtasks.views.snapshot import group_counts, reused_count, snapshot

    @app.task(cache=True)
    def sq(x: int) -> int:
        return x * x

    sq.map(range(3)).get(10)
    g = sq.map(range(4))
    g.get(10)
    snaps = [snapshot(r) for r in g.results]
    counts, total, _fraction = group_counts(snaps)
    assert reused_count(snaps) == 3
    assert counts_text(counts, total, reused_count(snaps)) == (
        "4/4 finished · 4 SUCCESSFUL · 3 reused"
    )
    assert group_line(g.id, snaps).endswith(": 4 SUCCESSFUL · 3 reused>")
    assert "3 reused" in group_html(g.id, snaps)
    fresh = sq.map([10, 11])
    fresh.get(10)
    assert "reused" not in group_line(fresh.id, [snapshot(r) for r in fresh.results])
    # After a restart: another App on the store reads which members the group reused.
    app.store.flush()
    later = nbtasks.App(store=app.store.path)
    try:
        reread = later.group_result(g.id)
        assert [r.cached for r in reread.results] == [True, True, True, False]
        assert group_line(g.id, [snapshot(r) for r in reread.results]).endswith(
            ": 4 SUCCESSFUL · 3 reused>"
        )
        assert not any(r.cached for r in later.group_result(fresh.id).results)
    finally:
        later.shutdown()
