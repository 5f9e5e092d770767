"""The session state table: the paths the issue names, and safety properties over any event sequence."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.session_states import (
    EMISSION_STATES,
    OPEN_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    Event,
    State,
    TransitionError,
    allowed_events,
    can_reach,
    transition,
)

S, E = State, Event


def run(events: list[Event], start: State = S.IDLE) -> State:
    state = start
    for event in events:
        state = transition(state, event)
    return state


def test_two_illuminations_with_a_pause_and_a_pullback() -> None:
    events = [
        E.LOAD, E.ARM, E.FOOTSWITCH_PRESSED, E.FOOTSWITCH_RELEASED, E.FOOTSWITCH_PRESSED,
        E.ILLUMINATION_DONE, E.PULLBACK_CONFIRMED, E.FOOTSWITCH_PRESSED, E.ENDPOINT_REACHED,
    ]  # fmt: skip
    seen = []
    state = S.IDLE
    for event in events:
        state = transition(state, event)
        seen.append(state)
    assert seen == [S.LOADED, S.ARMED, S.EMITTING, S.PAUSED, S.EMITTING, S.PULLBACK, S.ARMED, S.EMITTING, S.COMPLETE]


def test_the_table_covers_every_state_and_terminal_states_have_no_way_out() -> None:
    assert set(TRANSITIONS) == set(State)
    assert TERMINAL_STATES == {S.COMPLETE, S.ABORTED, S.FAULTED, S.INTERRUPTED}
    assert OPEN_STATES == {S.LOADED, S.ARMED, S.EMITTING, S.PAUSED, S.PULLBACK}
    assert allowed_events(S.IDLE) == {E.LOAD}


@pytest.mark.parametrize("state", sorted(OPEN_STATES))
def test_every_open_session_can_always_be_stopped(state: State) -> None:
    assert transition(state, E.ABORT) == S.ABORTED
    assert transition(state, E.FAULT) == S.FAULTED
    assert transition(state, E.INTERRUPT) == S.INTERRUPTED


def test_light_comes_only_from_a_footswitch_press_in_armed_or_paused() -> None:
    into_emission = [(s, e) for s, out in TRANSITIONS.items() for e, t in out.items() if t in EMISSION_STATES]
    assert sorted(into_emission) == sorted([(S.ARMED, E.FOOTSWITCH_PRESSED), (S.PAUSED, E.FOOTSWITCH_PRESSED)])
    # a confirmed pull-back arms, it never emits by itself
    assert transition(S.PULLBACK, E.PULLBACK_CONFIRMED) == S.ARMED


def test_every_state_is_reachable_from_idle() -> None:
    reached, queue = {S.IDLE}, deque([S.IDLE])
    while queue:
        for nxt in TRANSITIONS[queue.popleft()].values():
            if nxt not in reached:
                reached.add(nxt)
                queue.append(nxt)
    assert reached == set(State)


def test_illegal_transition_is_one_line_naming_event_state_and_choices() -> None:
    with pytest.raises(TransitionError) as info:
        transition(S.ARMED, E.FOOTSWITCH_RELEASED)
    assert str(info.value) == "session: FOOTSWITCH_RELEASED is not allowed in ARMED (allowed: ABORT, DISARM, FAULT, FOOTSWITCH_PRESSED, INTERRUPT)"
    with pytest.raises(TransitionError, match="none, it is terminal"):
        transition(S.COMPLETE, E.LOAD)
    with pytest.raises(TransitionError, match="unknown state 'ON'"):
        transition("ON", E.ARM)
    with pytest.raises(TransitionError, match="unknown event 'GO'"):
        transition(S.ARMED, "GO")
    assert transition("ARMED", "FOOTSWITCH_PRESSED") == S.EMITTING


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list(Event)), max_size=40))
def test_any_event_sequence(events: list[Event]) -> None:
    state = S.IDLE
    for event in events:
        before = state
        try:
            state = transition(state, event)
        except TransitionError as exc:
            assert "\n" not in str(exc) and str(event) in str(exc) and str(before) in str(exc)
            assert event not in allowed_events(before)
            continue
        assert event in allowed_events(before) and can_reach(before, state)
        assert before not in TERMINAL_STATES  # nothing leaves a terminal state
        if state == S.EMITTING:
            assert event == E.FOOTSWITCH_PRESSED
        if state == S.INTERRUPTED:
            assert event == E.INTERRUPT
