from django.apps import AppConfig


class GovernanceConfig(AppConfig):
    name = "governance"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Governance hears of the layers below it through their signals; they never import it.
        from fleet.control import robot_added
        from governance import decisions, rules
        from learner.signals import checkpoints_needed, version_published

        robot_added.connect(lambda sender, robot, actor=None, **kw: decisions.join_fleet_version(robot, actor),
                            weak=False, dispatch_uid="governance.join_fleet_version")
        version_published.connect(rules.version_published, dispatch_uid="governance.version_published")
        checkpoints_needed.connect(lambda sender, keep_fleet, **kw: decisions.checkpoints_needed(keep_fleet),
                                   weak=False, dispatch_uid="governance.checkpoints_needed")
