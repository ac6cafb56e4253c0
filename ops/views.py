"""Operations endpoints: /metrics (Prometheus), /healthz and /readyz (no login), and the supervisors' webhook pages
(endpoints, a test message, the delivery log)."""
from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required, permission_required
from django.core.paginator import Paginator
from django.db import transaction
from django.http import HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from core.models import AuditEvent
from ops import health, webhooks
from ops.access import monitoring_client
from ops.forms import WebhookForm
from ops.models import WebhookDelivery, WebhookEndpoint

PERMISSION = "ops.manage_webhooks"


@login_not_required
@never_cache
@require_GET
def metrics(request):
    """Every process's metrics (core.metrics, summed over their files) and the fleet's (ops.collectors), in the
    Prometheus text format. Open to METRICS_ALLOWED_NETWORKS and to holders of METRICS_TOKEN; no login."""
    if not settings.METRICS_ENABLED:
        return HttpResponse("metrics are off (METRICS_ENABLED=false)\n", status=404, content_type="text/plain")
    if not monitoring_client(request.META):
        return HttpResponseForbidden("/metrics answers only METRICS_ALLOWED_NETWORKS or a METRICS_TOKEN bearer\n",
                                     content_type="text/plain")
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    from core import metrics as process_metrics
    from ops.collectors import FleetCollector

    process_metrics.forget_dead_processes()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(process_metrics.DIRECTORY))
    registry.register(FleetCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


@login_not_required
@never_cache
@require_GET
def healthz(request):
    """The process is up and serving (no dependency is asked)."""
    return JsonResponse({"status": "ok"})


@login_not_required
@never_cache
@require_GET
def readyz(request):
    ok, checks = health.readiness()
    if not monitoring_client(request.META):
        # Anyone may ask (load balancers, probes); only the monitoring networks hear why (host names, roles).
        checks = {name: {key: value for key, value in check.items() if key != "error"}
                  for name, check in checks.items()}
    return JsonResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503)


# --- webhooks (supervisors) ---------------------------------------------------------------------------------


def _show_secret(request, endpoint: WebhookEndpoint, secret: str):
    # The only page that shows the secret: not cached by the browser, never logged.
    response = render(request, "ops/webhook_secret.html", {"endpoint": endpoint, "secret": secret})
    response["Cache-Control"] = "no-store"
    return response


@permission_required(PERMISSION, raise_exception=True)
def webhook_list(request):
    form = WebhookForm(request.POST or None, initial={"active": True})
    if request.method == "POST":
        if not form.is_valid():
            return render(request, "ops/webhooks.html", {"form": form, "endpoints": _endpoints()}, status=400)
        with transaction.atomic():
            endpoint = form.save(commit=False)
            endpoint.created_by = request.user
            if form.cleaned_data["secret"]:
                endpoint.secret = form.cleaned_data["secret"]
            endpoint.save()
            AuditEvent.record(request.user, "webhook.create", endpoint,
                              details={"kinds": endpoint.kinds, "url": endpoint.shown_url})
        return _show_secret(request, endpoint, endpoint.secret)
    return render(request, "ops/webhooks.html", {"form": form, "endpoints": _endpoints()})


def _endpoints():
    endpoints = list(WebhookEndpoint.objects.all())
    for endpoint in endpoints:
        endpoint.latest = endpoint.deliveries.first()
    return endpoints


@permission_required(PERMISSION, raise_exception=True)
def webhook_edit(request, pk: int):
    endpoint = get_object_or_404(WebhookEndpoint, pk=pk)
    form = WebhookForm(request.POST or None, instance=endpoint)
    if request.method == "POST":
        if not form.is_valid():
            return render(request, "ops/webhook_edit.html", {"form": form, "endpoint": endpoint}, status=400)
        with transaction.atomic():
            endpoint = form.save(commit=False)
            new_secret = form.cleaned_data["secret"]
            if new_secret:
                endpoint.secret = new_secret
            endpoint.save()
            AuditEvent.record(request.user, "webhook.change", endpoint,
                              details={"kinds": endpoint.kinds, "url": endpoint.shown_url, "active": endpoint.active,
                                       "secret_changed": bool(new_secret)})
        messages.success(request, f"Webhook {endpoint.name} saved.")
        return redirect("webhooks")
    return render(request, "ops/webhook_edit.html", {"form": form, "endpoint": endpoint})


@require_POST
@permission_required(PERMISSION, raise_exception=True)
def webhook_delete(request, pk: int):
    endpoint = get_object_or_404(WebhookEndpoint, pk=pk)
    with transaction.atomic():
        AuditEvent.record(request.user, "webhook.delete", endpoint, details={"url": endpoint.shown_url})
        endpoint.delete()
    messages.success(request, f"Webhook {endpoint.name} deleted with its delivery log.")
    return redirect("webhooks")


@require_POST
@permission_required(PERMISSION, raise_exception=True)
def webhook_test(request, pk: int):
    endpoint = get_object_or_404(WebhookEndpoint, pk=pk)
    with transaction.atomic():
        webhooks.enqueue(endpoint, webhooks.test_body(endpoint, request.user), event=WebhookDelivery.Event.TEST)
    messages.success(request, f"A test message to {endpoint.name} is on its way: its delivery log shows the answer.")
    return redirect("webhook-deliveries", pk=endpoint.pk)


@require_GET
@permission_required(PERMISSION, raise_exception=True)
def webhook_deliveries(request, pk: int):
    endpoint = get_object_or_404(WebhookEndpoint, pk=pk)
    page = Paginator(endpoint.deliveries.select_related("alert").prefetch_related("attempt_rows"), 25).get_page(
        request.GET.get("page"))
    return render(request, "ops/deliveries.html", {"endpoint": endpoint, "page": page})
