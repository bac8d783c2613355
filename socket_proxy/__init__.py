"""socket_proxy service."""
