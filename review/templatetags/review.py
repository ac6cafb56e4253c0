"""Template tags other pages use to show review results without knowing how they are computed:

    {% load review %}
    {% label_counts_table by="version" %}              dashboard: per version
    {% label_counts_table by="version" version=candidate against=deployed %}   comparison page: the two versions
    {% label_counts_table by="task" version=candidate against=deployed %}      ... and per task, for those two
    {% episode_review_panel episode %}                  episode page: the label, and a link to label it
"""
from django import template

from review import stats

register = template.Library()


@register.inclusion_tag("review/_label_counts.html")
def label_counts_table(by="version", version=None, task=None, since=None, versions=None, title=None, against=None):
    if against is not None:  # a comparison: both versions (`versions` cannot be built in a template)
        versions, version = [v for v in (version, against) if v is not None], None
    return {"counts": stats.label_counts(by=by, version=version, task=task, since=since, versions=versions),
            "title": title or f"Failure modes labelled, per {by}"}


@register.inclusion_tag("review/_episode_panel.html", takes_context=True)
def episode_review_panel(context, episode):
    from review.models import EpisodeLabel

    return {
        "episode": episode,
        "label": EpisodeLabel.objects.filter(episode=episode).select_related("annotator").first(),
        "can_label": context["request"].user.has_perm("review.label_episode"),
    }
