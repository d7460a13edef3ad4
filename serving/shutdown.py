"""arrival-serve's shutdown budget. It fits in the 10 s an instance gets between SIGTERM and SIGKILL
(the local cloud's agent, localcloud/instance_agent.py, and systemd's default on EC2). Every worker
process gets the SIGTERM at once (the agent and systemd signal the whole process group, and uvicorn's
supervisor passes it on), so the workers' shutdowns run side by side: the drain that tells each
client to reconnect (serving/listening.py), uvicorn's wait for the requests in flight
(serving/main.py), the captures' last write, then each refresher's join (two daemon threads that hold
nothing: what they are doing is dropped with the process). 1 + 3 + 4 + 2 x 0.5 = 9 s. Then the
supervisor stops its reload-queue reader (a daemon thread too) within READER_JOIN_SECONDS and removes
the instance's reload subscription."""

from __future__ import annotations

GRACEFUL_SHUTDOWN_SECONDS = 3
CAPTURE_SHUTDOWN_SECONDS = 4.0
STORE_THREAD_JOIN_SECONDS = 0.5
READER_JOIN_SECONDS = 0.5
