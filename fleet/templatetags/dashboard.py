from django import template
from django.utils.safestring import mark_safe

register = template.Library()


@register.simple_tag
def rate_cell(cell):
    """One breakdown cell: rate, successes / episodes and the Wilson interval. Built directly (every value is a
    number or one of our own words): a wide breakdown has hundreds of cells, and escaping or including per cell
    was most of the page's time."""
    if not cell:
        return mark_safe('<td class="cell muted">—</td>')
    mark = {"worse": "worse", "better": "better"}.get(cell.get("mark"), "")
    note = f": {mark} than the other robots" if mark else ""
    s, n = int(cell["successes"]), int(cell["episodes"])
    return mark_safe(
        f'<td class="cell {mark}" title="{s} of {n}{note}"><strong>{round(100 * s / n)} %</strong> '
        f'<span class="muted">{s}/{n} · [{round(100 * cell["low"])}–{round(100 * cell["high"])}]</span></td>')
