"""The experiment suite: `manage.py experiment run --sweep fleet --quick` on the real system (each run's own
database, Redis database and Celery processes), its cache, its report and the Experiments page."""
import json
import os
import subprocess
import sys
import time

import psycopg
import pytest
from django.conf import settings
from django.urls import reverse

from core.stats import mean_interval
from experiments import report, sweeps
from tests.conftest import ROOT, SCREENSHOTS, BrowserSession, process_env, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# ---- the pieces, in process ----

def evaluations(*points):
    return [{"robot_seconds": 60.0 * i, "success": s} for i, s in enumerate(points)]


def test_time_to_threshold_needs_two_consecutive_evaluations_at_or_above_it():
    assert report.time_to_threshold(evaluations(0.2, 0.85, 0.6, 0.8, 0.9), 0.8) == 180.0
    assert report.time_to_threshold(evaluations(0.2, 0.5, 0.9), 0.8) is None  # the last one alone
    assert report.time_to_threshold(evaluations(0.8, 0.8), 0.8) == 0.0


def test_mean_interval_is_student_t_across_repeats():
    mean, low, high = mean_interval([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9)
    assert (low, high) == pytest.approx((0.9 - 4.303 * 0.1 / 3 ** 0.5, 0.9 + 4.303 * 0.1 / 3 ** 0.5), abs=1e-3)
    assert mean_interval([0.7]) == (0.7, 0.7, 0.7)
    with pytest.raises(ValueError):
        mean_interval([])


def test_a_spec_key_ignores_the_arm_label_and_follows_everything_declared():
    fleet = {a["arm"]: a for a in sweeps.sweep("fleet")}
    gains = {a["arm"]: a for a in sweeps.sweep("gains")}
    pretraining = {a["arm"]: a for a in sweeps.sweep("pretraining")}
    assert sweeps.key(pretraining["5 demos + SOP"]) == sweeps.key(gains["SOP + HG-DAgger"])  # measured once for both
    # The fleet sweep evaluates its first minutes densely: its 4-robot arm is measured on its own.
    assert sweeps.key(fleet["4 robots"]) != sweeps.key(gains["SOP + HG-DAgger"])
    assert fleet["4 robots"]["eval_dense_minutes"] == 5.0 and "eval_dense_minutes" not in gains["SOP + HG-DAgger"]
    assert sweeps.key(fleet["1 robot"]) != sweeps.key(fleet["4 robots"])
    assert sweeps.key({**fleet["4 robots"], "learner_rate": 99}) != sweeps.key(fleet["4 robots"])
    for name in sweeps.SWEEPS:
        for quick in (False, True):
            arms = sweeps.sweep(name, quick)
            assert len({a["arm"] for a in arms}) == len(arms) >= (1 if name == "shift" else 3)
    with pytest.raises(ValueError, match="unknown sweep"):
        sweeps.sweep("nope")


@pytest.mark.parametrize("quick", [False, True])
def test_the_rounds_baseline_matches_sop_in_robot_time_and_learner_steps(quick):
    """The non-SOP arm of `ablations` differs from SOP's only in when versions reach the fleet: three rounds, each
    ending (with its version published and evaluated) before the budget does."""
    sop, *_, rounds = sweeps.sweep("ablations", quick)
    assert rounds["arm"].startswith("non-SOP") and rounds["eval_every"] == 1
    different = {k for k in sop if sop[k] != rounds[k]}
    assert different == {"arm", "publish_every", "eval_every"}
    total_steps = sop["learner_rate"] * sop["robot_minutes"] * 60
    assert sweeps.ROUNDS * rounds["publish_every"] < total_steps < (sweeps.ROUNDS + 1) * rounds["publish_every"]
    assert rounds["publish_every"] > 10 * sop["publish_every"] or quick


def test_the_controlled_clock_paces_the_learner_by_robot_time():
    from datetime import timedelta
    from types import SimpleNamespace

    from django.utils import timezone

    from learner.loop import _ahead_of_clock
    from learner.trainer import LearnerConfig

    run = SimpleNamespace(created_at=timezone.now() - timedelta(seconds=10))
    paced = SimpleNamespace(config=LearnerConfig(steps_per_robot_second=50, robot_pace=2.0), step=0)
    assert _ahead_of_clock(run, paced) <= 0  # 20 robot-seconds: 1,000 steps are due
    paced.step = 1100  # 100 steps ahead: 100 / (50 * 2) wall seconds to wait
    assert _ahead_of_clock(run, paced) == pytest.approx(1.0, abs=0.05)
    unpaced = SimpleNamespace(config=LearnerConfig(), step=10 ** 9)
    assert _ahead_of_clock(run, unpaced) == 0
    with pytest.raises(ValueError):
        LearnerConfig(robot_pace=0)


# ---- the quick fleet sweep on the real system ----

def experiment(*args, env, timeout=900):
    return subprocess.run([sys.executable, "manage.py", "experiment", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def databases_named(prefix: str) -> set[str]:
    db = settings.DATABASES["default"]
    params = {k: v for k, v in {"host": db["HOST"], "port": db["PORT"], "user": db["USER"],
                                "password": db["PASSWORD"]}.items() if v}
    with psycopg.connect(**params, dbname="postgres") as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [prefix + "%"]).fetchall()
    return {name for (name,) in rows}


def systems_of(results) -> list[int]:
    """The processes a sweep writing to `results` started (they inherit its EXPERIMENTS_DIR)."""
    marker = f"EXPERIMENTS_DIR={results}".encode()
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker in open(f"/proc/{entry}/environ", "rb").read().split(b"\0"):
                found.append(int(entry))
        except OSError:
            continue  # exited meanwhile, or not ours to read
    return found


@pytest.fixture(scope="module")
def quick_fleet(django_db_setup, tmp_path_factory):
    """One `experiment run --sweep fleet --quick` for the module: its directory, environment and output."""
    results = tmp_path_factory.mktemp("experiments")
    # Its own Redis database: not the streams' (15, 14), the soak's (13) or a developer's experiments (11).
    env = process_env(EXPERIMENTS_DIR=results, EXPERIMENTS_REDIS_DB=12)
    started = time.monotonic()
    done = experiment("run", "--sweep", "fleet", "--quick", env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield {"dir": results, "env": env, "out": done.stdout, "seconds": time.monotonic() - started}
    db = settings.DATABASES["default"]["NAME"]
    with psycopg.connect(**{k: v for k, v in {"host": settings.DATABASES["default"]["HOST"],
                                              "port": settings.DATABASES["default"]["PORT"],
                                              "user": settings.DATABASES["default"]["USER"]}.items() if v},
                         dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}_exp_template" WITH (FORCE)')


def test_a_quick_fleet_sweep_runs_each_arm_on_its_own_database_and_reports_what_it_measured(quick_fleet):
    results = quick_fleet["dir"]
    records = [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]
    assert sorted(r["spec"]["robots"] for r in records) == [1, 2, 4]
    for record in records:
        spec = record["spec"]
        # The clock: every robot ran, the learner trained at its declared rate, both measured.
        assert record["budget"]["online_episodes"] > 0 and record["budget"]["robot_steps"] > 0
        assert 0 < record["budget"]["expert_steps"] <= record["budget"]["robot_steps"]
        assert record["budget"]["learner_steps"] > 0
        clock = record["clock"]
        assert clock["pace_declared"] == spec["pace"] and clock["pace_achieved"] > 0
        assert clock["valid"] == (not clock["problems"])
        if clock["valid"]:
            assert clock["learner_rate_achieved"] >= 0.95 and clock["pace_achieved"] >= 0.95
        # The learner's steps follow robot time, not the machine: at most the declared rate.
        assert record["budget"]["learner_steps"] <= spec["learner_rate"] * record["robot_seconds"] * 1.01
        # Evaluated: the base at robot time 0, then every k-th version and the last, on the held-out seeds.
        evals = record["evaluations"]
        assert evals[0]["robot_seconds"] == 0 and evals[0]["number"] == record["base_version"]
        assert len(evals) >= 2 and [e["robot_seconds"] for e in evals] == sorted(e["robot_seconds"] for e in evals)
        # The fleet sweep's first minutes: every version published by then is evaluated, none skipped.
        dense = [e["number"] for e in evals[1:] if e["robot_seconds"] <= spec["eval_dense_minutes"] * 60]
        assert dense == list(range(record["base_version"] + 1, record["base_version"] + 1 + len(dense)))
        assert dense or not clock["valid"]  # a learner at its declared rate publishes in that window
        for e in evals:
            assert set(e["tasks"]) == set(spec["tasks"])
            assert all(t["episodes"] == spec["eval_episodes"] for t in e["tasks"].values())
            assert (results / "work" / f"{sweeps.key(spec)}-r1" / "checkpoints" / f"v{e['number']}").is_dir()
    # Each run's database is gone; the template stays for the next sweep.
    name = settings.DATABASES["default"]["NAME"]
    assert databases_named(f"{name}_exp_") == {f"{name}_exp_template"}
    # The summary's numbers are the records' numbers.
    summary = json.loads((results / "sweeps" / "fleet-quick.json").read_text())
    by_robots = {r["spec"]["robots"]: r for r in records}
    for arm in summary["arms"]:
        record = by_robots[arm["spec"]["robots"]]
        assert arm["final"]["mean"] == record["evaluations"][-1]["success"]
        assert arm["base"]["mean"] == record["evaluations"][0]["success"]
        assert arm["budget"]["robot_steps"] == record["budget"]["robot_steps"]
        assert arm["time_to_threshold"]["reached"] == (report.time_to_threshold(record["evaluations"]) is not None)
    assert summary["findings"] and all(f in quick_fleet["out"] for f in summary["findings"])
    html = (results / "reports" / "fleet-quick.html").read_text()
    assert "Plotly" in html and "<script src=" not in html  # self-contained: nothing fetched
    embedded = json.loads(html.split('<script type="application/json" id="summary">')[1].split("</script>")[0])
    assert embedded["arms"] == summary["arms"]
    for arm in summary["arms"]:
        assert f"{arm['budget']['robot_steps']:,.0f}" in html


def test_a_sweep_resumes_from_its_cache_and_refuses_to_run_twice_at_once(quick_fleet):
    results, env = quick_fleet["dir"], quick_fleet["env"]
    records = {p: p.stat().st_mtime_ns for p in (results / "runs").glob("*.json")}
    started = time.monotonic()
    again = experiment("run", "--sweep", "fleet", "--quick", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(": cached (") == 3
    assert {p: p.stat().st_mtime_ns for p in (results / "runs").glob("*.json")} == records  # nothing measured again
    assert time.monotonic() - started < quick_fleet["seconds"] / 2
    # A run that stopped part-way: the sweep measures only what is missing.
    missing = sorted(records)[0]
    missing.unlink()
    # While a sweep holds the lock another is refused (and changes nothing).
    import fcntl

    with open(results / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        refused = experiment("run", "--sweep", "fleet", "--quick", env=env)
    assert refused.returncode != 0 and "another sweep is running" in refused.stderr
    assert not missing.exists()
    # And a run whose clock was marked invalid is measured again when asked (--redo-invalid); valid ones are kept.
    # (The other is made valid whatever this machine managed: a loaded machine marks quick runs invalid too.)
    invalid, valid = sorted(records)[1:]
    for path, ok in ((invalid, False), (valid, True)):
        record = json.loads(path.read_text())
        record["clock"].update(valid=ok, problems=[] if ok else ["robots ran at 90 % of their declared pace"])
        path.write_text(json.dumps(record))
    # A sweep stopped with SIGTERM while a run's clock runs leaves nothing behind: no process of the run's system,
    # no database of the run, no record; the next sweep measures that run again.
    stopped = subprocess.Popen([sys.executable, "manage.py", "experiment", "run", "--sweep", "fleet", "--quick",
                                "--redo-invalid"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        for line in stopped.stdout:
            if "clock started" in line:
                break
        assert systems_of(results), "the run's processes, while its clock runs"
        stopped.terminate()
        assert stopped.wait(180) != 0
    finally:
        stopped.kill()
    wait_for(lambda: not systems_of(results), 30, "the run's processes to end")
    template = f"{settings.DATABASES['default']['NAME']}_exp_template"
    assert databases_named(f"{settings.DATABASES['default']['NAME']}_exp_") == {template}
    assert json.loads(invalid.read_text())["clock"]["problems"] == ["robots ran at 90 % of their declared pace"]
    resumed = experiment("run", "--sweep", "fleet", "--quick", "--redo-invalid", env=env)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert resumed.stdout.count(": cached (") == 1 and missing.exists()
    assert resumed.stdout.count("cached but invalid (robots ran at 90 % of their declared pace): measuring again") == 1
    assert json.loads(invalid.read_text())["clock"]["problems"] != ["robots ran at 90 % of their declared pace"]


def test_bad_input_to_the_command_is_refused_with_a_clear_error(quick_fleet, tmp_path):
    env = dict(quick_fleet["env"], EXPERIMENTS_DIR=str(tmp_path))
    for args, message in ((["run"], "--sweep is required"), (["run", "--sweep", "nope"], "invalid choice"),
                          (["run", "--sweep", "fleet", "--repeats", "0"], "--repeats must lie in 1..50"),
                          (["report", "--sweep", "gains"], "no finished runs of gains yet"),
                          (["run", "--sweep", "fleet", "--fresh", "--redo-invalid"], "give one of --fresh and")):
        done = experiment(*args, env=env)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr)
    assert list(tmp_path.iterdir()) == []
    assert "no sweeps in" in experiment("list", env=env).stdout


# ---- the Experiments page ----

@pytest.fixture
def shown(quick_fleet, settings):
    settings.EXPERIMENTS_DIR = quick_fleet["dir"]
    return quick_fleet


@pytest.mark.django_db
@pytest.mark.parametrize("persona, allowed", [("olivia", True), ("sam", True), ("anna", False), ("oscar", False)])
def test_supervisors_and_operators_read_the_experiments(client, request, shown, persona, allowed):
    client.force_login(request.getfixturevalue(persona))
    page = client.get(reverse("experiments"))
    served = client.get(reverse("experiment-report", args=["fleet-quick"]))
    if not allowed:
        assert page.status_code == served.status_code == 403
        return
    assert page.status_code == 200
    summary = json.loads((shown["dir"] / "sweeps" / "fleet-quick.json").read_text())
    text = page.content.decode()
    for arm in summary["arms"]:
        assert arm["arm"] in text
    assert served.status_code == 200
    policy = served["Content-Security-Policy"]
    assert policy.startswith("sandbox allow-scripts;") and "connect-src" not in policy  # no network from it
    assert b"Plotly" in b"".join(served.streaming_content)
    assert client.get(reverse("experiment-report", args=["fleet-quick"]) + "?download=1")[
        "Content-Disposition"].startswith("attachment")
    for bad in ("..%2Fsweeps%2Ffleet-quick", "fleet-quick.json", "FLEET", "nope"):
        assert client.get(f"/experiments/{bad}/report/").status_code == 404


def test_the_report_draws_its_figures_offline_in_chromium(chromium, quick_fleet):
    page = chromium.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto((quick_fleet["dir"] / "reports" / "fleet-quick.html").as_uri())
    page.wait_for_selector("#figure-success .main-svg")
    assert page.locator(".js-plotly-plot").count() == 4  # success, time to threshold, throughput, interventions
    assert page.locator("#figure-success .scatterlayer .trace").count() == 3  # one curve per fleet size
    assert not errors and all(url.startswith("file://") for url in requests)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "experiments-fleet-quick-report.png"), full_page=True)
    page.close()


def test_an_operator_opens_a_sweeps_report_from_the_experiments_page(chromium, quick_fleet, start_web, olivia):
    server = start_web(EXPERIMENTS_DIR=quick_fleet["dir"])
    session = BrowserSession(chromium, f"http://{server.address}", "experiments-page-olivia")
    try:
        session.login(olivia)
        session.page.goto(session.base_url + "/experiments/")
        rows = session.page.locator("#sweep-fleet-quick tbody tr")
        assert rows.count() == 3 and rows.first.locator("td").first.inner_text() == "1 robot"
        session.screenshot("list")
        with session.context.expect_page() as opened:
            session.page.click("text=Open the report")
        report_page = opened.value
        # Served sandboxed: its inline Plotly still draws (scripts are allowed, in an opaque origin).
        report_page.wait_for_selector("#figure-success .main-svg")
        assert report_page.locator(".js-plotly-plot").count() == 4
        report_page.screenshot(path=str(SCREENSHOTS / "experiments-page-olivia-report.png"), full_page=True)
        assert not session.console_errors
    finally:
        session.context.close()
