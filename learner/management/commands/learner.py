"""Start, stop or inspect the continuous post-training run; apply checkpoint retention now."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from learner.models import TrainingRun


class Command(BaseCommand):
    help = "learner start [--algorithm hg_dagger|bc] | learner stop | learner status | learner prune"

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["start", "stop", "status", "prune"])
        parser.add_argument("--algorithm", help="default: LEARNER_ALGORITHM")
        parser.add_argument("--fixed-online-share", type=float, help="ablation: no SOP resampling")
        parser.add_argument("--resampler-scale", choices=["raw", "normalised"],
                            help="the SOP resampler's losses as they are, or normalised (default: "
                                 "LEARNER_RESAMPLER_SCALE)")
        parser.add_argument("--steps-per-robot-second", type=float,
                            help="the controlled clock: gradient steps per second of robot time (default: "
                                 "LEARNER_STEPS_PER_ROBOT_SECOND; 0: unpaced)")
        parser.add_argument("--if-none", action="store_true", help="start only if no run is active")
        parser.add_argument("--as", dest="username")

    def handle(self, *args, action, algorithm, fixed_online_share, if_none, username, resampler_scale=None,
               steps_per_robot_second=None, **options):
        from learner.loop import start_run

        actor = get_user_model().objects.filter(username=username).first() if username else None
        active = TrainingRun.objects.filter(status=TrainingRun.Status.ACTIVE).first()
        if action == "prune":
            from learner.retention import prune_checkpoints

            removed = prune_checkpoints()
            self.stdout.write(f"removed the checkpoints of {len(removed)} versions"
                              + (f": {', '.join(str(v) for v in removed)}" if removed else ""))
            return
        if action == "status":
            if active is None:
                self.stdout.write("no active run")
            else:
                self.stdout.write(f"{active}: step {active.step}, episodes folded up to id {active.episode_cursor}")
            return
        if action == "stop":
            if active is None:
                raise CommandError("no active run to stop")
            active.stop(actor)
            self.stdout.write(f"stopped {active}")
            return
        if active is not None:
            if if_none:
                self.stdout.write(f"{active} is already running")
                return
            raise CommandError(f"{active} is already active; stop it first")
        overrides = {} if fixed_online_share is None else {"fixed_online_share": fixed_online_share}
        if resampler_scale is not None:
            overrides["resampler_scale"] = resampler_scale
        if steps_per_robot_second is not None:
            overrides["steps_per_robot_second"] = steps_per_robot_second
        try:
            run = start_run(algorithm, actor, **overrides)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"started {run} from {run.base_version}")
