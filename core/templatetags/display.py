"""How values read on pages: one date format with the relative time on hover, display names for codes, and
JSON details (audit rows, configs, gate parameters) as labelled tables rather than Python dicts.

    {% load display %}
    {{ episode.finished_at|when }}   ->  <time datetime="2026-12-03T08:22:16+00:00" title="3 minutes ago">...</time>
    {{ label.failure_mode|label }}   ->  Wrong placement
    {% details_table event.details %}
"""
from __future__ import annotations

from django import template
from django.contrib.humanize.templatetags.humanize import naturaltime
from django.utils import formats, timezone
from django.utils.html import format_html

register = template.Library()

# Codes whose display name is not simply the code with its underscores as spaces.
NAMES = {
    "hg_dagger": "HG-DAgger", "recap": "RECAP", "bc": "behaviour cloning", "w_on": "online share",
    "l_on": "online loss", "l_off": "offline loss", "sha256": "SHA-256", "pk": "id", "url": "URL",
    "ci_low": "95 % CI low", "ci_high": "95 % CI high",
}


@register.filter
def when(value):
    """A datetime as the site's one format, with how long ago (or ahead) on hover; empty for None."""
    if not value:
        return ""
    local = timezone.localtime(value) if timezone.is_aware(value) else value
    return format_html('<time datetime="{}" title="{}">{}</time>', value.isoformat(), naturaltime(value),
                       formats.date_format(local, "DATETIME_FORMAT"))


@register.filter
def label(value) -> str:
    """A code as people read it: `wrong_placement` -> "Wrong placement" (and a few names said their own way)."""
    if value is None or value == "":
        return ""
    text = str(value)
    if text in NAMES:
        return NAMES[text]
    words = text.replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:]


def _rows(value, prefix: str = "") -> list[tuple[str, object]]:
    """(label, value) pairs of a JSON value, nested keys joined with " › ", lists of scalars joined."""
    if isinstance(value, dict):
        rows = []
        for key, item in value.items():
            name = f"{prefix} › {label(key)}" if prefix else label(key)
            if isinstance(item, dict) and item:
                rows.extend(_rows(item, name))
            else:
                rows.append((name, _scalar(item)))
        return rows
    return [(prefix or "value", _scalar(value))]


def _scalar(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_scalar(item) for item in value) if value else "—"
    if isinstance(value, dict):
        return "—"
    return str(value)


@register.inclusion_tag("core/_details_table.html")
def details_table(value, caption: str = ""):
    """A JSON object as a two-column table of labelled values."""
    return {"rows": _rows(value) if value not in (None, "", {}) else [], "caption": caption}
