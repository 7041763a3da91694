from django.contrib import admin
from django.urls import include, path

from panel import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("membership/", views.membership, name="membership"),
    path("membership/apply/", views.membership_apply, name="membership_apply"),
    path("membership/applications/<int:pk>/", views.application_detail, name="application_detail"),
    path("membership/leave/", views.membership_leave, name="membership_leave"),
    path("activity/", views.activity, name="activity"),
    path("billing/", views.billing, name="billing"),
    path("commune/", views.commune, name="commune"),
    path("i18n/setlang/", views.switch_language, name="set_language"),
    path("staff/applications/", views.staff_applications, name="staff_applications"),
    path(
        "staff/applications/<int:pk>/decide/",
        views.staff_application_decide,
        name="staff_application_decide",
    ),
    path("staff/status/", views.staff_status, name="staff_status"),
    # The service apps plug in here by module path; `panel` imports none of their code.
    path("hosting/", include("provisioning.urls")),
    path("newsletters/", include("newsletters.urls")),
    path("calls/", include("telephony.urls")),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
]
