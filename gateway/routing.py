from django.urls import path

from gateway.consumers import RobotConsumer

websocket_urlpatterns = [path("ws/robot/", RobotConsumer.as_asgi())]
