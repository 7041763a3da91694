from django.urls import path

from provisioning import views

app_name = "provisioning"
urlpatterns = [
    path("", views.index, name="index"),
    path("sites/<int:pk>/", views.site, name="site"),
    path("sites/<int:pk>/jobs/", views.site_jobs, name="site_jobs"),
    path("sites/<int:pk>/aliases/", views.alias_add, name="alias_add"),
    path("sites/<int:pk>/aliases/<int:alias_pk>/remove/", views.alias_remove, name="alias_remove"),
    path("sites/<int:pk>/databases/", views.database_add, name="database_add"),
    path("sites/<int:pk>/<str:action>/", views.site_action, name="site_action"),
    path("jobs/<int:pk>/retry/", views.job_retry, name="job_retry"),
    path("keys/", views.keys, name="keys"),
    path("keys/<int:pk>/remove/", views.key_remove, name="key_remove"),
    path("staff/failed-jobs/", views.staff_failed_jobs, name="staff_failed_jobs"),
    path("staff/nodes/", views.staff_nodes, name="staff_nodes"),
    path("staff/nodes/<int:pk>/", views.staff_node, name="staff_node"),
    path("staff/nodes/<int:pk>/enroll/", views.staff_node_enroll, name="staff_node_enroll"),
]
