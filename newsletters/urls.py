from django.urls import path

from newsletters import views

app_name = "newsletters"
urlpatterns = [
    path("", views.index, name="index"),
    path("domains/", views.domain_add, name="domain_add"),
    path("domains/<int:pk>/", views.domain, name="domain"),
    path("domains/<int:pk>/check/", views.domain_check, name="domain_check"),
    path("domains/<int:pk>/remove/", views.domain_remove, name="domain_remove"),
    path("lists/new/", views.list_new, name="list_new"),
    path("lists/<int:pk>/", views.list_detail, name="list"),
    path("lists/<int:pk>/edit/", views.list_edit, name="list_edit"),
    path("lists/<int:pk>/import/", views.list_import, name="list_import"),
    path("lists/<int:pk>/export.csv", views.list_export, name="list_export"),
    path("lists/<int:pk>/campaigns/new/", views.campaign_new, name="campaign_new"),
    path("lists/<int:pk>/subscribers/<int:sub_pk>/", views.subscriber, name="subscriber"),
    path(
        "lists/<int:pk>/subscribers/<int:sub_pk>/remove/",
        views.subscriber_remove,
        name="subscriber_remove",
    ),
    path("imports/<int:pk>/", views.import_status, name="import"),
    path("campaigns/<int:pk>/", views.campaign, name="campaign"),
    path("campaigns/<int:pk>/preview.html", views.campaign_preview, name="campaign_preview"),
    path("campaigns/<int:pk>/progress/", views.campaign_progress, name="campaign_progress"),
    path("campaigns/<int:pk>/schedule/", views.campaign_schedule, name="campaign_schedule"),
    path("campaigns/<int:pk>/test/", views.campaign_test, name="campaign_test"),
    path("campaigns/<int:pk>/<str:action>/", views.campaign_action, name="campaign_action"),
    # Public: no login.
    path("l/<slug:slug>/", views.signup, name="signup"),
    path("l/<slug:slug>/archive/", views.archive, name="archive"),
    path("l/<slug:slug>/archive/<int:pk>/", views.archive_item, name="archive_item"),
    path(
        "l/<slug:slug>/archive/<int:pk>/page.html",
        views.archive_item_page,
        name="archive_item_page",
    ),
    path("confirm/<str:token>/", views.confirm, name="confirm"),
    path("u/<str:token>/", views.unsubscribe, name="unsubscribe"),
    path("staff/outbox/", views.outbox, name="staff_outbox"),
    path("staff/domains/", views.staff_domains, name="staff_domains"),
    path(
        "staff/domains/<int:pk>/override/",
        views.staff_domain_override,
        name="staff_domain_override",
    ),
]
