from __future__ import annotations

import threading

from securechat.server.deadlines import Watchdog

WAIT = 10.0


def test_runs_callbacks_in_deadline_order() -> None:
    dog = Watchdog()
    dog.start()
    order: list[str] = []
    done = threading.Event()
    dog.after(0.06, lambda: (order.append("late"), done.set()))
    dog.after(0.01, lambda: order.append("early"))
    assert done.wait(WAIT)
    dog.stop()
    assert order == ["early", "late"]


def test_cancelled_deadline_never_runs() -> None:
    dog = Watchdog()
    dog.start()
    ran = threading.Event()
    later = threading.Event()
    handle = dog.after(0.01, ran.set)
    handle.cancel()
    dog.after(0.05, later.set)  # the watchdog has passed the cancelled one by then
    assert later.wait(WAIT)
    dog.stop()
    assert not ran.is_set() and handle.cancelled


def test_a_failing_callback_does_not_stop_the_others() -> None:
    dog = Watchdog()
    dog.start()
    ok = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    dog.after(0.0, boom)
    dog.after(0.01, ok.set)
    assert ok.wait(WAIT)
    dog.stop()


def test_fake_clock_controls_when_things_are_due() -> None:
    now = [100.0]
    dog = Watchdog(clock=lambda: now[0])
    handle = dog.after(5.0, lambda: None)
    assert handle.when == 105.0


def test_stop_joins_the_thread_and_skips_pending_work() -> None:
    dog = Watchdog()
    dog.start()
    ran = threading.Event()
    dog.after(3600, ran.set)
    dog.stop()
    assert not dog._thread.is_alive() and not ran.is_set()
