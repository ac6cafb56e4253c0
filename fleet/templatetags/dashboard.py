import math

from django import template
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from fleet.dashboard import DEFINITIONS

register = template.Library()


def _half_up(value: float) -> int:
    """Rounded as static/js/fleet.js rounds (Math.round: halves up), so a KPI and its chart's hover agree."""
    return math.floor(value + 0.5)


@register.filter
def percent(rate) -> str:
    """A share as a whole percentage ("45 %"); "—" when there was nothing to count."""
    return "—" if rate is None else f"{_half_up(rate * 100)} %"


@register.filter
def whole(value) -> str:
    """A figure as a whole number; "—" for none."""
    return "—" if value is None else str(_half_up(value))


@register.simple_tag
def definition(name: str) -> str:
    """The one-line definition of a figure (fleet.dashboard.DEFINITIONS), for a title attribute."""
    return DEFINITIONS[name]


@register.simple_tag
def rate_cell(cell):
    """One breakdown cell: autonomous success rate, its successes / episodes and Wilson interval, and assisted
    success beside it. Built directly (every value is a number or one of our own words): a wide breakdown has
    hundreds of cells, and escaping or including per cell was most of the page's time."""
    if not cell:
        return mark_safe('<td class="cell muted">—</td>')
    mark = {"worse": "worse", "better": "better"}.get(cell.get("mark"), "")
    note = f": {mark} than the other robots" if mark else ""
    s, n, h = int(cell["successes"]), int(cell["episodes"]), int(cell["assisted"])
    return mark_safe(
        f'<td class="cell {mark}" title="autonomous: {s} of {n}{note}; assisted: {h} of {n}">'
        f'<strong>{_half_up(100 * s / n)} %</strong> '
        f'<span class="muted">{s}/{n} · [{_half_up(100 * cell["low"])}–{_half_up(100 * cell["high"])}]</span>'
        f' <span class="assisted">+{_half_up(100 * h / n)} % assisted</span></td>')


@register.inclusion_tag("fleet/_window_picker.html")
def window_picker(form, picker, custom_form: bool = True):
    """The time-range picker: preset links, and (custom_form) a from/to form of its own."""
    return {"form": form, "picker": picker, "custom_form": custom_form}


@register.simple_tag
def info(text: str):
    """A small circled "i" that shows `text` on hover (its title) and to screen readers."""
    return format_html('<span class="info" title="{}" aria-label="{}">i</span>', text, text)
