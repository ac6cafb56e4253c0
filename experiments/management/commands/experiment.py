"""Run a declared sweep on the real system, resume it, and report it.

    manage.py experiment run --sweep fleet [--quick] [--repeats 3] [--fresh | --redo-invalid]
    manage.py experiment report --sweep fleet [--quick]
    manage.py experiment list

Each run gets its own PostgreSQL database (cloned from a migrated template), Redis database and storage directory,
and the whole system (actor, learner, default and control workers, beat) in child processes. A finished run is kept
under EXPERIMENTS_DIR by the hash of its spec and its repeat number: a sweep that stops resumes with the runs it
lacks; `--fresh` measures again, `--redo-invalid` measures again only the runs whose clock was marked invalid (the
machine could not keep the declared pace or learner rate).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from experiments import report, store, sweeps
from experiments.processes import ROOT, exit_on_sigterm

# How long a stopped run may take to stop the system's processes (each gets 60 s: Process.stop) before it is killed.
STOP_SECONDS = 300


class Command(BaseCommand):
    help = ("experiment run|report --sweep NAME [--quick] [--repeats N] [--fresh | --redo-invalid] | "
            "experiment list")

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["run", "report", "list", "run-one"],
                            help="run-one is internal: one run inside the private environment a sweep made")
        parser.add_argument("--sweep", choices=sweeps.SWEEPS)
        parser.add_argument("--quick", action="store_true", help="tiny budgets: minutes for a whole sweep")
        parser.add_argument("--repeats", type=int, help="repeats per arm, each with its own online seeds "
                                                        "(default 3; 1 with --quick)")
        parser.add_argument("--fresh", action="store_true", help="measure again even where a cached run exists")
        parser.add_argument("--redo-invalid", action="store_true",
                            help="measure again the cached runs whose clock was marked invalid")
        parser.add_argument("--spec")
        parser.add_argument("--resolved", default="{}")
        parser.add_argument("--repeat", type=int)
        parser.add_argument("--run-dir")
        parser.add_argument("--record")

    def handle(self, *args, action, sweep, quick, repeats, fresh, redo_invalid=False, **options):
        if action == "list":
            return self.list()
        exit_on_sigterm()
        if action == "run-one":
            return self.run_one(options)
        if sweep is None:
            raise CommandError(f"--sweep is required: one of {', '.join(sweeps.SWEEPS)}")
        if fresh and redo_invalid:
            raise CommandError("--fresh measures every run again already: give one of --fresh and --redo-invalid")
        repeats = repeats if repeats is not None else (1 if quick else 3)
        if not 1 <= repeats <= 50:
            raise CommandError("--repeats must lie in 1..50")
        if action == "report":
            done: dict[str, list[dict]] = {}
            for spec in sweeps.sweep(sweep, quick):  # in order: an arm may take figures from one before it
                done[spec["arm"]] = self.cached(spec, repeats, done)
            arms = list(done.items())
            if not any(records for _, records in arms):
                raise CommandError(f"no finished runs of {store.sweep_name(sweep, quick)} yet: "
                                   f"`manage.py experiment run --sweep {sweep}{' --quick' if quick else ''}`")
            return self.write_report(sweep, quick, arms)
        try:
            with store.exclusive():
                return self.run_sweep(sweep, quick, repeats, fresh, redo_invalid)
        except store.Busy as exc:
            raise CommandError(str(exc)) from None

    # ---- the sweep (parent) ----

    def say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def resolved(self, spec: dict, done: dict[str, list[dict]]) -> dict:
        """What an arm takes from an arm measured before it (BC given HG-DAgger's expert frames)."""
        other = spec.get("match_expert_frames_of")
        if not other:
            return {}
        records = done.get(other)
        if not records:
            raise CommandError(f"arm {spec['arm']!r} needs the runs of {other!r} first")
        mean = lambda key: round(sum(r["budget"][key] for r in records) / len(records))  # noqa: E731
        return {"extra_expert_frames": mean("expert_steps"), "extra_learner_steps": mean("learner_steps")}

    @staticmethod
    def key(spec: dict, resolved: dict) -> str:
        return sweeps.key({**spec, "resolved": resolved} if resolved else spec)

    def cached(self, spec: dict, repeats: int, done: dict | None = None) -> list[dict]:
        try:
            resolved = self.resolved(spec, done if done is not None else {})
        except CommandError:
            return []
        key = self.key(spec, resolved)
        return [r for n in range(1, repeats + 1) if (r := store.read_record(key, n)) is not None]

    def run_sweep(self, sweep: str, quick: bool, repeats: int, fresh: bool, redo_invalid: bool = False) -> None:
        from experiments import databases

        specs = sweeps.sweep(sweep, quick)
        template = None
        done: dict[str, list[dict]] = {}
        for spec in specs:
            resolved = self.resolved(spec, done)
            key = self.key(spec, resolved)
            records = []
            for repeat in range(1, repeats + 1):
                record = None if fresh else store.read_record(key, repeat)
                if record is not None and redo_invalid and not record["clock"]["valid"]:
                    self.say(f"{spec['arm']}, repeat {repeat}: cached but invalid "
                             f"({'; '.join(record['clock']['problems'])}): measuring again")
                    record = None
                if record is not None:
                    self.say(f"{spec['arm']}, repeat {repeat}: cached ({store.record_path(key, repeat)})")
                else:
                    template = template or databases.ensure_template()
                    record = self.run_child(spec, resolved, key, repeat, template)
                records.append(record)
            done[spec["arm"]] = records
        self.write_report(sweep, quick, list(done.items()))

    def run_child(self, spec: dict, resolved: dict, key: str, repeat: int, template: str) -> dict:
        from experiments import databases
        from experiments.runner import private_env

        run_dir = store.work_dir(key, repeat)
        shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted attempt's leftovers
        run_dir.mkdir(parents=True)
        database = databases.private_name(store.run_name(key, repeat).replace("-", "_"))
        databases.create_from(template, database)
        self.say(f"{spec['arm']}, repeat {repeat}: running on database {database} (logs in {run_dir / 'logs'})")
        started = time.monotonic()
        try:
            child = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "experiment", "run-one", "--spec", json.dumps(spec),
                 "--resolved", json.dumps(resolved), "--repeat", str(repeat), "--run-dir", str(run_dir),
                 "--record", str(store.record_path(key, repeat))],
                cwd=ROOT, env=private_env(spec, database, run_dir))
            try:
                returncode = child.wait()
            except BaseException:  # stopped (Ctrl-C, SIGTERM): the run stops its system before its database goes
                child.terminate()
                try:
                    child.wait(STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                raise
        finally:
            databases.drop(database)
            shutil.rmtree(run_dir / "storage", ignore_errors=True)  # the kept checkpoints are in checkpoints/
        if returncode != 0:
            raise CommandError(f"{spec['arm']}, repeat {repeat} failed (exit {returncode}): see the output "
                               f"above and {run_dir / 'logs'}")
        record = store.read_record(key, repeat)
        self.say(f"{spec['arm']}, repeat {repeat}: done in {(time.monotonic() - started) / 60:.1f} min; "
                 f"success {record['evaluations'][0]['success']:.2f} → {record['evaluations'][-1]['success']:.2f}"
                 + ("" if record["clock"]["valid"] else f"; INVALID: {'; '.join(record['clock']['problems'])}"))
        return record

    def write_report(self, sweep: str, quick: bool, arms: list[tuple[str, list[dict]]]) -> None:
        name = store.sweep_name(sweep, quick)
        summary = report.summarise(sweep, quick, arms)
        store.write_json(store.summary_path(name), summary)
        store.write_text(store.report_path(name), report.render_html(summary, report.plotly_js()))
        for line in summary["findings"]:
            self.say(f"- {line}")
        self.say(f"report: {store.report_path(name)}")

    def list(self) -> None:
        found = store.summaries()
        if not found:
            self.say(f"no sweeps in {store.root()} yet")
        for s in found:
            runs = sum(a["repeats"] for a in s["arms"])
            self.say(f"{s['name']}: {len(s['arms'])} arm(s), {runs} run(s), generated {s['generated']}")

    # ---- one run (child) ----

    def run_one(self, options: dict) -> None:
        from experiments.runner import execute

        spec = json.loads(options["spec"])
        record = execute(spec, json.loads(options["resolved"]), options["repeat"], Path(options["run_dir"]),
                         say=lambda text: self.say(f"  [{spec['arm']} r{options['repeat']}] {text}"))
        store.write_json(Path(options["record"]), record)
