"""Campaigns: bad input is refused with a clear message, the state machine, schedules,
test copies, and the refusal to send from a domain that is not verified."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from newsletters import services
from newsletters.models import Campaign, CampaignState, SendingDomain
from panel.models import AuditEntry, UsageEvent
from tests.newsletters.fixtures import add_confirmed, dkim_valid

pytestmark = pytest.mark.django_db


def draft(mlist, alice, **kwargs):
    values = {"subject": "News", "text_body": "Hello {{ name }}", "html_body": ""}
    values.update(kwargs)
    return services.campaign_create(mlist=mlist, actor=alice, **values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"subject": "Hi\r\nBcc: all@example.org"}, "must be one line"),
        ({"subject": "Hi\nX-Spam: no"}, "must be one line"),
        ({"subject": "x" * 201}, "longer than 200"),
        ({"subject": ""}, "needs a subject"),
        ({"text_body": ""}, "plain text version"),
        ({"text_body": "a\nb\nHello {{ nmae }}"}, "line 3: unknown merge field {{ nmae }}"),
        ({"html_body": "<p>{{ unsubscribe }}</p>"}, "The HTML, line 1: unknown merge field"),
        ({"text_body": "x" * (600 * 1024)}, "the limit is 512 KiB"),
    ],
)
def test_bad_campaigns_are_refused_saying_what_and_where(alice, alice_list, values, message):
    with pytest.raises(
        services.NewsletterError, match=message.replace("{", r"\{").replace("}", r"\}")
    ):
        draft(alice_list, alice, **values)
    assert not Campaign.objects.exists()


def test_the_page_shows_the_error_and_saves_nothing(client, alice, alice_list):
    client.force_login(alice)
    response = client.post(
        reverse("newsletters:campaign_new", args=[alice_list.pk]),
        {"subject": "Hello\r\nBcc: x@example.org", "text_body": "Hi"},
    )
    assert response.status_code == 422
    assert "must be one line" in response.content.decode()
    assert not Campaign.objects.exists()


def test_an_unverified_from_domain_is_refused_before_anything_is_sent(
    alice, alice_list, alice_domain, mail_rate
):
    add_confirmed(alice_list, 2)
    campaign = draft(alice_list, alice)
    SendingDomain.objects.filter(pk=alice_domain.pk).update(verified_at=None)
    with pytest.raises(services.NewsletterError) as refused:
        services.campaign_start(campaign=campaign, actor=alice)
    assert "alice-news.example is not verified" in str(refused.value)
    assert "garden@alice-news.example" in str(refused.value)
    assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.DRAFT


def test_without_a_price_or_subscribers_it_does_not_start(alice, alice_list):
    campaign = draft(alice_list, alice)
    with pytest.raises(services.NewsletterError, match="no price"):
        services.campaign_start(campaign=campaign, actor=alice)


def test_no_confirmed_subscribers_no_start(alice, alice_list, mail_rate):
    campaign = draft(alice_list, alice)
    with pytest.raises(services.NewsletterError, match="no confirmed subscribers"):
        services.campaign_start(campaign=campaign, actor=alice)


def test_the_state_machine_and_its_audit_trail(
    alice, alice_list, mail_rate, sink, django_capture_on_commit_callbacks
):
    add_confirmed(alice_list, 2)
    campaign = draft(alice_list, alice)
    services.campaign_update(campaign=campaign, actor=alice, subject="Better", text_body="Hi")
    with pytest.raises(services.NewsletterError, match="future"):
        services.campaign_schedule(campaign=campaign, actor=alice, at=timezone.now())
    soon = timezone.now() + timedelta(hours=1)
    services.campaign_schedule(campaign=campaign, actor=alice, at=soon)
    with pytest.raises(services.NewsletterError, match="Only a draft can be edited"):
        services.campaign_update(campaign=campaign, actor=alice, subject="x", text_body="y")
    services.campaign_unschedule(campaign=campaign, actor=alice)
    services.campaign_schedule(campaign=campaign, actor=alice, at=soon)
    # Not due yet.
    assert services.start_due_campaigns() == 0
    Campaign.objects.filter(pk=campaign.pk).update(scheduled_at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        assert services.start_due_campaigns() == 1
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.SENT
    with pytest.raises(services.NewsletterError, match="already finished"):
        services.campaign_cancel(campaign=campaign, actor=alice)
    actions = list(
        AuditEntry.objects.filter(object_type="newsletters.campaign")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == [
        "newsletters.campaign_created",
        "newsletters.campaign_changed",
        "newsletters.campaign_scheduled",
        "newsletters.campaign_unscheduled",
        "newsletters.campaign_scheduled",
        "newsletters.campaign_started",
    ]


def test_a_scheduled_campaign_that_cannot_start_goes_back_to_draft_with_the_reason(
    alice, alice_list, alice_domain, mail_rate
):
    add_confirmed(alice_list, 1)
    campaign = draft(alice_list, alice)
    services.campaign_schedule(
        campaign=campaign, actor=alice, at=timezone.now() + timedelta(minutes=5)
    )
    Campaign.objects.filter(pk=campaign.pk).update(scheduled_at=timezone.now())
    SendingDomain.objects.filter(pk=alice_domain.pk).update(verified_at=None)
    assert services.start_due_campaigns() == 0
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.DRAFT
    assert "not verified" in campaign.pause_reason


def test_test_copies_go_only_to_the_members_own_addresses(
    client, alice, alice_list, alice_domain, mail_rate, sink, django_capture_on_commit_callbacks
):
    campaign = draft(alice_list, alice, html_body="<p>Hi {{ name }}</p>")
    client.force_login(alice)
    url = reverse("newsletters:campaign_test", args=[campaign.pk])
    page = client.post(url, {"to": "stranger@example.org"}, follow=True).content.decode()
    assert "only to your own verified addresses" in page
    with django_capture_on_commit_callbacks(execute=True):
        client.post(url, {"to": alice.email})
    assert len(sink.envelopes) == 1
    _sender, rcpt, raw = sink.envelopes[0]
    assert rcpt == [alice.email]
    assert dkim_valid(raw, alice_domain)
    assert (
        UsageEvent.objects.filter(service="newsletters", source_key__startswith="test:").count()
        == 1
    )


def test_the_page_starts_pauses_and_cancels(
    client, alice, alice_list, mail_rate, django_capture_on_commit_callbacks
):
    add_confirmed(alice_list, 2)
    campaign = draft(alice_list, alice)
    client.force_login(alice)
    with django_capture_on_commit_callbacks(execute=False):
        client.post(reverse("newsletters:campaign_action", args=[campaign.pk, "start"]))
    assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.SENDING
    progress = client.get(reverse("newsletters:campaign_progress", args=[campaign.pk]))
    assert 'hx-trigger="every 1s"' in progress.content.decode()
    client.post(reverse("newsletters:campaign_action", args=[campaign.pk, "pause"]))
    assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.PAUSED
    client.post(reverse("newsletters:campaign_action", args=[campaign.pk, "cancel"]))
    assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.CANCELLED
    assert (
        client.post(
            reverse("newsletters:campaign_action", args=[campaign.pk, "explode"])
        ).status_code
        == 404
    )
