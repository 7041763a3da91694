from django.contrib import admin
from django.urls import include, path

from panel.views import billing, staff_billing
from panel.views import core as views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("membership/", views.membership, name="membership"),
    path("membership/apply/", views.membership_apply, name="membership_apply"),
    path("membership/applications/<int:pk>/", views.application_detail, name="application_detail"),
    path("membership/leave/", views.membership_leave, name="membership_leave"),
    path("activity/", views.activity, name="activity"),
    path("billing/", billing.billing, name="billing"),
    path("billing/statements/<str:label>/", billing.statement, name="statement"),
    path("billing/statements/<str:label>.csv", billing.statement_csv, name="statement_csv"),
    path("commune/", billing.commune, name="commune"),
    path("i18n/setlang/", views.switch_language, name="set_language"),
    path("staff/applications/", views.staff_applications, name="staff_applications"),
    path(
        "staff/applications/<int:pk>/decide/",
        views.staff_application_decide,
        name="staff_application_decide",
    ),
    path("staff/status/", views.staff_status, name="staff_status"),
    path("staff/billing/", staff_billing.overview, name="staff_billing"),
    path("staff/billing/payments/", staff_billing.payments, name="staff_payments"),
    path("staff/billing/payments/import/", staff_billing.bank_upload, name="staff_bank_upload"),
    path("staff/billing/imports/<int:pk>/", staff_billing.bank_import, name="staff_bank_import"),
    path("staff/billing/invoices/", staff_billing.invoices, name="staff_invoices"),
    path(
        "staff/billing/invoices/<int:pk>/paid/",
        staff_billing.invoice_paid,
        name="staff_invoice_paid",
    ),
    path("staff/billing/periods/<int:pk>/close/", staff_billing.close, name="staff_close"),
    path(
        "staff/billing/periods/<int:pk>/progress/",
        staff_billing.close_progress,
        name="staff_close_progress",
    ),
    path("staff/billing/trial-balance/", staff_billing.trial_balance, name="staff_trial_balance"),
    # The service apps plug in here by module path; `panel` imports none of their code.
    path("hosting/", include("provisioning.urls")),
    path("newsletters/", include("newsletters.urls")),
    path("calls/", include("telephony.urls")),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
]

# Without the database (a failover), a 503 that says to come back instead of a 500.
handler500 = "panel.views.errors.server_error"
