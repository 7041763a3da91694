from django.urls import path

from telephony import views

app_name = "telephony"
urlpatterns = [path("", views.index, name="index")]
