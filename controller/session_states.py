"""Treatment-session states and the one table of allowed transitions.

A session's life:

    IDLE -load-> LOADED -arm-> ARMED -footswitch pressed-> EMITTING <-> PAUSED (footswitch released)
    EMITTING/PAUSED -illumination done-> PULLBACK -pull-back confirmed-> ARMED   (next fibre position)
    ... -endpoint reached-> COMPLETE;  any open state -abort-> ABORTED, -fault-> FAULTED

IDLE is "no plan loaded": the daemon's state between sessions. A session is created in the
journal by LOAD; its terminal states (COMPLETE, ABORTED, FAULTED, INTERRUPTED) have no way
out, and the daemon is IDLE again, ready for the next session. INTERRUPTED is set only by the
journal's crash recovery, on a session that was open when the daemon stopped; nothing resumes
by itself.

Which event the daemon raises is its business: the last illumination ends with ENDPOINT_REACHED
(to COMPLETE), the others with ILLUMINATION_DONE (to PULLBACK). Dose keeps accumulating after the
light stops, so the endpoint can also be reached while PAUSED or in PULLBACK.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, TypeVar


class State(enum.StrEnum):
    IDLE = "IDLE"
    LOADED = "LOADED"
    ARMED = "ARMED"
    EMITTING = "EMITTING"
    PAUSED = "PAUSED"
    PULLBACK = "PULLBACK"  # between illuminations: fibres being pulled back, operator to confirm
    COMPLETE = "COMPLETE"
    ABORTED = "ABORTED"
    FAULTED = "FAULTED"
    INTERRUPTED = "INTERRUPTED"  # open when the daemon stopped; set by recovery only


class Event(enum.StrEnum):
    LOAD = "LOAD"
    ARM = "ARM"
    DISARM = "DISARM"
    FOOTSWITCH_PRESSED = "FOOTSWITCH_PRESSED"
    FOOTSWITCH_RELEASED = "FOOTSWITCH_RELEASED"
    ILLUMINATION_DONE = "ILLUMINATION_DONE"
    PULLBACK_CONFIRMED = "PULLBACK_CONFIRMED"
    ENDPOINT_REACHED = "ENDPOINT_REACHED"
    ABORT = "ABORT"
    FAULT = "FAULT"
    INTERRUPT = "INTERRUPT"


class TransitionError(ValueError):
    """An event that is not allowed in the current state. `str(e)` is one line."""


S, E = State, Event

# Every way out of a session that is open (a plan is loaded): the operator aborts, the safety
# layer faults, or crash recovery finds it open.
_ANY_OPEN: Final = {E.ABORT: S.ABORTED, E.FAULT: S.FAULTED, E.INTERRUPT: S.INTERRUPTED}

TRANSITIONS: Final[Mapping[State, Mapping[Event, State]]] = MappingProxyType(
    {
        S.IDLE: MappingProxyType({E.LOAD: S.LOADED}),
        S.LOADED: MappingProxyType({E.ARM: S.ARMED, **_ANY_OPEN}),
        S.ARMED: MappingProxyType({E.FOOTSWITCH_PRESSED: S.EMITTING, E.DISARM: S.LOADED, **_ANY_OPEN}),
        S.EMITTING: MappingProxyType(
            {
                E.FOOTSWITCH_RELEASED: S.PAUSED,
                E.ILLUMINATION_DONE: S.PULLBACK,
                E.ENDPOINT_REACHED: S.COMPLETE,
                **_ANY_OPEN,
            }
        ),
        S.PAUSED: MappingProxyType(
            {
                E.FOOTSWITCH_PRESSED: S.EMITTING,
                E.ILLUMINATION_DONE: S.PULLBACK,  # the operator ends this fibre position early
                E.ENDPOINT_REACHED: S.COMPLETE,
                **_ANY_OPEN,
            }
        ),
        # Back to ARMED, not EMITTING: light only comes again on a fresh footswitch press.
        S.PULLBACK: MappingProxyType({E.PULLBACK_CONFIRMED: S.ARMED, E.ENDPOINT_REACHED: S.COMPLETE, **_ANY_OPEN}),
        S.COMPLETE: MappingProxyType({}),
        S.ABORTED: MappingProxyType({}),
        S.FAULTED: MappingProxyType({}),
        S.INTERRUPTED: MappingProxyType({}),
    }
)

TERMINAL_STATES: Final = frozenset(s for s, out in TRANSITIONS.items() if not out)
# A session exists and has not ended (what crash recovery looks for).
OPEN_STATES: Final = frozenset(State) - TERMINAL_STATES - {S.IDLE}
# The only states in which the LS-4 may be asked to emit.
EMISSION_STATES: Final = frozenset({S.EMITTING})


_K = TypeVar("_K", State, Event)


def _coerce(kind: type[_K], value: object, what: str) -> _K:
    try:
        return kind(value)
    except ValueError:
        raise TransitionError(f"session: unknown {what} {value!r} (known: {', '.join(kind)})") from None


def transition(current: State | str, event: Event | str) -> State:
    """The state after `event` in `current`; TransitionError (one line) if the table does not allow it."""
    state = _coerce(State, current, "state")
    ev = _coerce(Event, event, "event")
    allowed = TRANSITIONS[state]
    if ev not in allowed:
        choices = ", ".join(sorted(allowed)) or "none, it is terminal"
        raise TransitionError(f"session: {ev} is not allowed in {state} (allowed: {choices})")
    return allowed[ev]


def allowed_events(current: State | str) -> frozenset[Event]:
    return frozenset(TRANSITIONS[_coerce(State, current, "state")])


def can_reach(current: State | str, new: State | str) -> bool:
    """Whether one event takes `current` to `new` (the journal checks state changes with this)."""
    return _coerce(State, new, "state") in TRANSITIONS[_coerce(State, current, "state")].values()
