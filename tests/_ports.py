"""A free TCP port for each multi-process launch: pytest -n 2 may run two launches at once, and
Accelerate's default rendezvous port (29500) would make them collide."""
import socket


def free_port() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])
