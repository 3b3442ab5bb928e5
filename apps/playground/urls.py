from django.urls import path

from apps.playground import views

urlpatterns = [
    path("", views.home, name="playground"),
    path("new/", views.new_chat, name="playground-new"),
    path("c/<int:conversation_id>/", views.chat, name="playground-chat"),
    path("c/<int:conversation_id>/thread/", views.thread, name="playground-thread"),
    path("c/<int:conversation_id>/settings/", views.chat_settings, name="playground-settings"),
    path("c/<int:conversation_id>/delete/", views.chat_delete, name="playground-delete"),
    path("c/<int:conversation_id>/documents/", views.attach_document, name="playground-attach"),
    path("c/<int:conversation_id>/export.<str:fmt>", views.export, name="playground-export"),
    path("messages/<int:message_id>/rate/", views.rate, name="playground-rate"),
    path("messages/<int:message_id>/prefer/", views.prefer, name="playground-prefer"),
    path("compare/", views.compare, name="playground-compare"),
    path("compare/<int:comparison_id>/", views.comparison_detail, name="playground-comparison"),
    path("arena/", views.arena, name="playground-arena"),
    path("arena/<int:battle_id>/", views.battle, name="playground-battle"),
    path("arena/<int:battle_id>/vote/", views.battle_vote, name="playground-vote"),
    path("feedback/", views.feedback, name="playground-feedback"),
    path("feedback/exports/", views.feedback_exports, name="playground-exports"),
    path("tools/", views.http_tools, name="playground-tools"),
    path("tools/<int:tool_id>/delete/", views.http_tool_delete, name="playground-tool-delete"),
]
