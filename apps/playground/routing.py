from django.urls import path

from apps.playground.consumers import ConversationConsumer

websocket_urlpatterns = [path("ws/playground/conversations/<int:conversation_id>/", ConversationConsumer.as_asgi())]
