"""The console's samples are keyed by wall-clock time, and the page asks for "the samples
after the newest I have" (``?since=T``, router/node/console.py Sampler.since; console.js
poll()). The sampler stamps each sample with ``time.time()`` (consoleweb.Console.sample)
and computes its rates over wall-clock spans (Sampler.add).

When the system clock steps back (NTP correcting a drifted clock at boot, a VM restored
or resumed, an operator fixing the date), every new sample has a ``t`` below the page's
newest, so ``since(T)`` returns nothing and the page's own ``s[0] > lastSample`` check
drops them too: the traffic charts and sparklines of every open console freeze for as
long as the step (an hour's step: an hour of no figures). The first sample after the step
is dropped as well (``span <= 0``). Sample times and spans should come from a monotonic
clock (loop.time()), with the wall time only for display, or samples carry a sequence
number the page asks ``since``.
"""
from __future__ import annotations

from router.node.console import Sampler, Totals


def test_samples_after_a_clock_step_back_reach_an_open_page():
    sampler = Sampler()
    wall = 1_800_000_000.0
    msgs = 0
    for k in range(5):                      # ten seconds of samples, 100 msg/s
        msgs += 200
        sampler.add(wall + 2 * k, Totals(msgs_in=msgs))
    page_has = sampler.samples[-1][0]       # what the open page sends as ?since=
    wall -= 3600                            # NTP steps the clock back an hour
    for k in range(5, 35):                  # the next minute of traffic
        msgs += 200
        sampler.add(wall + 2 * k, Totals(msgs_in=msgs))
    new = sampler.since(page_has)
    assert len(new) >= 25, (
        f"after the clock stepped back, a minute of new samples (30 taken, 100 msg/s) "
        f"reach the open console as {len(new)} samples: ?since={page_has} filters by "
        f"wall-clock time, so the charts stay frozen until the clock passes the old time "
        f"again (an hour)")
