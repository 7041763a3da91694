from django.urls import path

from telephony import views

app_name = "telephony"
urlpatterns = [
    path("", views.index, name="index"),
    path("phones/", views.phone_add, name="phone_add"),
    path("phones/<int:pk>/remove/", views.phone_remove, name="phone_remove"),
    path("pin/", views.pin, name="pin"),
    path("pin/unlock/", views.pin_unlock, name="pin_unlock"),
    path("plan/", views.plan, name="plan"),
    path("staff/decks/", views.staff_decks, name="staff_decks"),
    path("staff/decks/<int:pk>/mapping/", views.staff_deck_mapping, name="staff_deck_mapping"),
    path("staff/decks/<int:pk>/retry/", views.staff_deck_retry, name="staff_deck_retry"),
    path("staff/live/", views.staff_live, name="staff_live"),
]
