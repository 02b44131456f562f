"""Pod statuses (the Tapis values, including the space in 'SPAWNER SETUP') and requested states."""

from __future__ import annotations

REQUESTED = "REQUESTED"
SPAWNER_SETUP = "SPAWNER SETUP"
CREATING = "CREATING"
AVAILABLE = "AVAILABLE"
DELETING = "DELETING"
STOPPED = "STOPPED"
ERROR = "ERROR"
COMPLETE = "COMPLETE"

ALL = (REQUESTED, SPAWNER_SETUP, CREATING, AVAILABLE, DELETING, STOPPED, ERROR, COMPLETE)
# States a pod must not stay in forever: each has a deadline after which the controllers act.
TRANSITIONAL = (REQUESTED, SPAWNER_SETUP, CREATING, DELETING)
# Final states of an instance: the container exists (or existed) and is not running.
FINISHED = (ERROR, COMPLETE)

ON = "ON"
OFF = "OFF"
RESTART = "RESTART"
