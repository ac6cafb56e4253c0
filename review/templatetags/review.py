"""Template tags other pages use to show review results without knowing how they are computed:

    {% load review %}
    {% label_counts_table by="version" %}              dashboard: per version
    {% label_counts_table by="task" versions=pair %}   comparison page: per task, for the versions compared
    {% episode_review_panel episode %}                  episode page: label, flags, flag form, review link
"""
from django import template

from review import stats

register = template.Library()


@register.inclusion_tag("review/_label_counts.html")
def label_counts_table(by="version", version=None, task=None, since=None, versions=None, title=None):
    return {"counts": stats.label_counts(by=by, version=version, task=task, since=since, versions=versions),
            "title": title or f"Failure modes labelled, per {by}"}


@register.inclusion_tag("review/_episode_panel.html", takes_context=True)
def episode_review_panel(context, episode):
    from fleet.models import EpisodeFlag, EpisodeLabel
    from review.forms import FlagForm

    user = context["request"].user
    label = EpisodeLabel.objects.filter(episode=episode).select_related("annotator").first()
    return {
        "episode": episode, "label": label, "request": context["request"],
        "flags": EpisodeFlag.objects.filter(episode=episode).select_related("raised_by", "resolved_by"),
        "can_flag": user.has_perm("fleet.flag_episode"), "can_label": user.has_perm("fleet.label_episode"),
        "flag_form": FlagForm(),
        "csrf_token": context.get("csrf_token"),
    }
