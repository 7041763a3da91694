from django.urls import path

from provisioning import views

app_name = "provisioning"
urlpatterns = [path("", views.index, name="index")]
