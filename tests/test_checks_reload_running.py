"""[[checks]] apply only after a restart (docs/configuration.md "Reload"): a reload that
removes or renames a check reports ``restart_required`` and the scheduler keeps running
the old check. But the reload rebuilds the host -> zone map from the NEW [[checks]]
(router/node/reload.py _object_hosts), so the old check's host is unknown from then on:
every result of the check that is still running is refused by routing (unknown_object)
and reaches neither the parent nor the node's result view until the restart."""
from __future__ import annotations

from tests.conftest import run  # noqa: F401  (the project's both-loops fixture)
from tests.nodeutil import ClusterSpec, FakePeer, wait_until
from tests.pkiutil import make_test_pki


def test_results_of_a_check_still_running_after_reload_are_delivered(tmp_path, run):
    from router.app import RouterService
    from router.config import load_config

    pki = make_test_pki(tmp_path / "pki", ["master", "sat1"])
    spec = ClusterSpec(tmp_path, pki, [("master", ["master"], None),
                                       ("sat", ["sat1"], "master")])
    check = ("[[checks]]\n"
             'host = "{host}"\nservice = "alive"\ncommand = "dummy"\n'
             "interval = 1\nretry_interval = 1\n"
             "[checks.macros]\ndummy_state = 0\n")
    path = tmp_path / "sat1.toml"
    (tmp_path / "sat1").mkdir()
    path.write_text(spec.toml("sat1") + check.format(host="web1"))

    async def main():
        sat = RouterService(load_config(str(path)))
        await sat.start()
        master = None
        try:
            master = await FakePeer.connect(spec.port("sat1"), pki, "master",
                                            server_name="sat1")

            def results():
                return [m for m in master.messages("event::CheckResult")
                        if m["params"]["host"] == "web1"]
            await wait_until(lambda: results(), what="a first result of web1!alive")
            # The operator renames the check's host; [[checks]] waits for a restart.
            path.write_text(spec.toml("sat1") + check.format(host="web01"))
            record = await sat.reload("test")
            assert record.result == "ok", record.error
            assert "checks" in record.as_json().get("restart_required", ()), record.as_json()
            assert "web1!alive" in sat.node.checks.scheduler.checks   # still scheduled
            before = len(results())
            ran = sat.node.checks.scheduler.scheduled
            try:
                await wait_until(lambda: len(results()) >= before + 2, timeout=6,
                                 what="results after the reload")
            except AssertionError:
                refused = sat.node.checks.scheduler.scheduled - ran
                raise AssertionError(
                    f"web1!alive still ran {refused} time(s) after the reload (checks are "
                    "restart-only), but none of its results reached the parent: routing "
                    "now refuses its host as unknown_object") from None
        finally:
            if master is not None:
                await master.close()
            await sat.stop()

    run(main(), timeout=60)
