"""Template tags other pages use to show review results without knowing how they are computed:

    {% load review %}
    {% label_counts_table by="version" %}              dashboard: per version
    {% label_counts_table by="task" versions=pair %}   comparison page: per task, for the versions compared
    {% episode_review_panel episode %}                  episode page: the label, and a link to label it
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
    from fleet.models import EpisodeLabel

    return {
        "episode": episode,
        "label": EpisodeLabel.objects.filter(episode=episode).select_related("annotator").first(),
        "can_label": context["request"].user.has_perm("fleet.label_episode"),
    }
