from django.urls import path

from apps.serving.consumers import DeploymentChatConsumer

websocket_urlpatterns = [path("ws/deployments/<int:deployment_id>/chat/", DeploymentChatConsumer.as_asgi())]
