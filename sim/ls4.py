"""LS-4 four-channel laser source, modelled to its datasheet (register map 1, firmware 2.1).

The device updates in steps of UPDATE_PERIOD_S of device time. Everything the host can see
is derived from this model's state through the shared register map in protocol/ls4.py.
Where the datasheet is silent, the choice made here is listed in docs/simulator.md.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field

from protocol import ls4 as P
from protocol.registers import Table, encode_block
from protocol.validation import ExceptionCode, check_values, writes_by_row

from .device import Identity

UPDATE_PERIOD_S = P.UPDATE_PERIOD_MS / 1000.0
NV_SAVE_PERIOD_S = 1.0  # datasheet: energy counters saved at least once a second
POWER_MONITOR_NOISE_FRACTION = 0.005  # 1 sigma of the photodiode reading while emitting
POWER_MONITOR_NOISE_FLOOR_MW = 2.0
BACK_REFLECTION_INTACT_PERMILLE = 30  # ~3 % Fresnel return at the silica/tissue face
BACK_REFLECTION_BROKEN_PERMILLE = 250  # a cleaved/broken fibre returns far more
BACK_REFLECTION_NOISE_PERMILLE = 2.0
DIODE_COOLED_TEMP_C = 25.0  # TEC setpoint
DIODE_UNCOOLED_TEMP_C = 35.0  # cabinet air when the cooler has failed
DIODE_COOLED_C_PER_W = 0.8  # rise per W of optical output with the cooler working
DIODE_UNCOOLED_C_PER_W = 4.0
DIODE_TAU_S = 15.0
# A diode that tripped at 45.00 degC counts as "still hot" until it is below this: without
# hysteresis a reset right at the threshold would trip again at once.
DIODE_RESET_BELOW_C = 43.0
CABINET_TEMP_C = 28.0
DEFAULT_REBOOT_SILENT_S = 2.0


class Fibre(enum.Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    BROKEN = "broken"  # still plugged in; light leaks out of the break, none reaches the tip


@dataclass
class PhysicalInputs:
    """What only the world (the bench) can change: the wired safety inputs and the hardware."""

    key_on: bool = True
    estop_pressed: bool = False
    interlock_open: bool = False
    footswitch_pressed: bool = False
    fibre: list[Fibre] = field(default_factory=lambda: [Fibre.CONNECTED] * P.CHANNEL_COUNT)
    cooling_ok: list[bool] = field(default_factory=lambda: [True] * P.CHANNEL_COUNT)
    emitter_drift: list[float] = field(default_factory=lambda: [0.0] * P.CHANNEL_COUNT)  # true output / setpoint - 1
    monitor_error: list[float] = field(default_factory=lambda: [0.0] * P.CHANNEL_COUNT)  # reading / true output - 1
    selftest_failed: bool = False
    # a unit with other firmware: what MAP_VERSION / FIRMWARE_VERSION it reports (bench "ls4 firmware")
    map_version: int = P.MAP_VERSION
    firmware_version: int = P.FIRMWARE_VERSION


class LS4Device:
    """One LS-4. Call `advance(dt_s)` to let device time pass; read and write through the register methods."""

    regmap = P.REGISTER_MAP

    @property
    def identity(self) -> Identity:
        fw = self.inputs.firmware_version
        return Identity(vendor_name=P.VENDOR_NAME, product_code=P.PRODUCT_CODE, revision=f"{fw >> 8}.{fw & 0xFF}")

    def __init__(self, *, unit_id: int = P.UNIT_ID, seed: int = 0) -> None:
        self.unit_id = unit_id
        self.inputs = PhysicalInputs()
        self._rng = random.Random(seed)
        n = P.CHANNEL_COUNT
        # non-volatile: survives reboot (as of the last save)
        self.energy_mj = [0.0] * n
        self.emission_time_ms = [0.0] * n
        self._nv_energy_mj = [0.0] * n
        self._nv_emission_time_ms = [0.0] * n
        self._since_nv_save_s = 0.0
        # ground truth the host never sees: light that actually reached each tip
        self.true_output_mw = [0.0] * n
        self.true_tip_energy_j = [0.0] * n
        self.diode_temp_c = [DIODE_COOLED_TEMP_C] * n
        self._power_on()

    # --- power cycle -------------------------------------------------------------

    def _power_on(self) -> None:
        """Volatile state after power-on: holding registers at defaults, no fault, STANDBY."""
        n = P.CHANNEL_COUNT
        self.holding: dict[str, object] = P.REGISTER_MAP.defaults(Table.HOLDING)
        self.holding = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.holding.items()}
        self.uptime_s = 0.0
        self.fault_code = P.FaultCode.NONE
        self.fault_channel: int | None = None
        self.heartbeat_echo = 0
        self._last_heartbeat_change_s = 0.0
        self._footswitch_needs_release = False
        self.active_setpoint_mw = [0.0] * n
        self.output_power_mw = [0] * n  # what the photodiode reports
        self.back_reflection_permille = [0] * n
        self._deviation_s = [0.0] * n
        self.at_limit = [False] * n
        self.energy_mj = list(self._nv_energy_mj)
        self.emission_time_ms = list(self._nv_emission_time_ms)
        self.true_output_mw = [0.0] * n

    def reboot(self) -> None:
        """A power cycle: volatile state is lost, the energy counters come back from their last save."""
        self._power_on()

    # --- derived state --------------------------------------------------------------

    @property
    def control(self) -> P.Control:
        return P.Control(self.holding["CONTROL"])

    @property
    def state(self) -> P.DeviceState:
        if self.fault_code != P.FaultCode.NONE:
            return P.DeviceState.FAULT
        control = self.control
        if P.Control.HOST_CONTROL not in control:
            return P.DeviceState.STANDBY
        if P.Control.EMISSION_ENABLE not in control:
            return P.DeviceState.READY
        if self.inputs.footswitch_pressed and not self._footswitch_needs_release:
            return P.DeviceState.EMITTING
        return P.DeviceState.ARMED

    def channel_emits(self, channel: int) -> bool:
        return (
            self.state is P.DeviceState.EMITTING
            and self.holding["CH_ENABLE"][channel] == 1
            and self.inputs.fibre[channel] is not Fibre.DISCONNECTED
            and self.holding["POWER_SETPOINT"][channel] > 0
        )

    def tip_power_w(self) -> list[float]:
        """Optical power reaching each fibre tip now: none through a broken or disconnected fibre."""
        return [
            self.true_output_mw[c] / 1000.0 if self.inputs.fibre[c] is Fibre.CONNECTED else 0.0
            for c in range(P.CHANNEL_COUNT)
        ]

    def _arming_conditions_met(self) -> bool:
        i = self.inputs
        return (
            P.Control.HOST_CONTROL in self.control
            and i.key_on
            and not i.estop_pressed
            and not i.interlock_open
            and self.fault_code == P.FaultCode.NONE
        )

    def _watchdog_expired(self) -> bool:
        if P.Control.HOST_CONTROL not in self.control:
            return False
        timeout_s = self.holding["WATCHDOG_TIMEOUT"] / 1000.0
        return self.uptime_s - self._last_heartbeat_change_s >= timeout_s - 1e-9

    def heartbeat_age_s(self) -> float:
        """Device time since the heartbeat last changed (or host control was taken)."""
        return self.uptime_s - self._last_heartbeat_change_s

    def watchdog_remaining_ms(self) -> int:
        if P.Control.HOST_CONTROL not in self.control or self.fault_code == P.FaultCode.WATCHDOG_EXPIRED:
            return 0
        left_s = self.holding["WATCHDOG_TIMEOUT"] / 1000.0 - (self.uptime_s - self._last_heartbeat_change_s)
        return max(0, min(0xFFFF, math.ceil(left_s * 1000.0 - 1e-6)))

    # --- faults ------------------------------------------------------------------------

    def _latch(self, code: P.FaultCode, channel: int | None = None) -> None:
        """Any fault: emission stops, EMISSION_ENABLE clears, the first fault is kept until reset."""
        if self.fault_code == P.FaultCode.NONE:
            self.fault_code = code
            self.fault_channel = channel
        self.holding["CONTROL"] &= ~int(P.Control.EMISSION_ENABLE)
        self._stop_emission()

    def _stop_emission(self) -> None:
        for c in range(P.CHANNEL_COUNT):
            self.active_setpoint_mw[c] = 0.0
            self.true_output_mw[c] = 0.0
            self.output_power_mw[c] = 0
            self._deviation_s[c] = 0.0

    def _fault_cause_present(self) -> bool:
        """Would a FAULT_RESET be refused? The latched cause, or any fault that latches in every state."""
        i = self.inputs
        if i.estop_pressed or i.selftest_failed or any(t > P.DIODE_OVERTEMP_CENTI_C / 100.0 for t in self.diode_temp_c):
            return True
        code, ch = self.fault_code, self.fault_channel
        if code == P.FaultCode.DIODE_OVERTEMP and ch is not None:
            return self.diode_temp_c[ch] >= DIODE_RESET_BELOW_C
        if code == P.FaultCode.WATCHDOG_EXPIRED:
            return self._watchdog_expired()
        if code == P.FaultCode.INTERLOCK_OPEN:
            return i.interlock_open
        if code == P.FaultCode.KEY_OFF:
            return not i.key_on
        if code == P.FaultCode.FIBRE_FAULT and ch is not None:
            return i.fibre[ch] is not Fibre.CONNECTED
        return False

    def _check_state_faults(self) -> None:
        """Faults that follow from the inputs and the watchdog, checked at every update."""
        i = self.inputs
        state = self.state
        if i.estop_pressed:
            self._latch(P.FaultCode.ESTOP)
        if i.selftest_failed:
            self._latch(P.FaultCode.INTERNAL)
        for c, temp in enumerate(self.diode_temp_c):
            if temp > P.DIODE_OVERTEMP_CENTI_C / 100.0:
                self._latch(P.FaultCode.DIODE_OVERTEMP, c)
        if state in (P.DeviceState.ARMED, P.DeviceState.EMITTING):
            if i.interlock_open:
                self._latch(P.FaultCode.INTERLOCK_OPEN)
            if not i.key_on:
                self._latch(P.FaultCode.KEY_OFF)
        if self._watchdog_expired():
            self._latch(P.FaultCode.WATCHDOG_EXPIRED)

    # --- physical world -------------------------------------------------------------

    def set_footswitch(self, pressed: bool) -> None:
        self.inputs.footswitch_pressed = pressed
        if not pressed:
            self._footswitch_needs_release = False
            if self.state is not P.DeviceState.FAULT:
                self._stop_emission()
        self._check_state_faults()

    def set_input(self, **changes: object) -> None:
        """Change wired inputs (key_on, estop_pressed, interlock_open, selftest_failed) and react at once."""
        for name, value in changes.items():
            if not hasattr(self.inputs, name):
                raise AttributeError(name)
            setattr(self.inputs, name, value)
        self._check_state_faults()

    def set_fibre(self, channel: int, fibre: Fibre) -> None:
        was_emitting = self.channel_emits(channel) and self.active_setpoint_mw[channel] > 0
        self.inputs.fibre[channel] = fibre
        if was_emitting and fibre is Fibre.DISCONNECTED:
            self._latch(P.FaultCode.FIBRE_FAULT, channel)

    # --- time ------------------------------------------------------------------------

    def advance(self, dt_s: float) -> None:
        """Let dt_s of device time pass, in update steps of at most UPDATE_PERIOD_S."""
        while dt_s > 1e-12:
            step = min(UPDATE_PERIOD_S, dt_s)
            self._update(step)
            dt_s -= step

    def _update(self, dt_s: float) -> None:
        self.uptime_s += dt_s
        self._check_state_faults()
        emitting = self.state is P.DeviceState.EMITTING
        for c in range(P.CHANNEL_COUNT):
            self._update_channel(c, dt_s, emitting)
        self._since_nv_save_s += dt_s
        if self._since_nv_save_s >= NV_SAVE_PERIOD_S:
            self._nv_energy_mj = list(self.energy_mj)
            self._nv_emission_time_ms = list(self.emission_time_ms)
            self._since_nv_save_s = 0.0

    def _update_channel(self, c: int, dt_s: float, device_emitting: bool) -> None:
        i = self.inputs
        setpoint = float(self.holding["POWER_SETPOINT"][c])
        if device_emitting and self.channel_emits(c):
            ramp_mw = self.holding["RAMP_RATE"][c] * dt_s
            active = self.active_setpoint_mw[c]
            self.active_setpoint_mw[c] = setpoint if setpoint <= active else min(setpoint, active + ramp_mw)
        else:
            self.active_setpoint_mw[c] = 0.0
        active = self.active_setpoint_mw[c]
        true_mw = active * (1.0 + i.emitter_drift[c]) if active > 0 else 0.0
        self.true_output_mw[c] = max(0.0, true_mw)
        if true_mw > 0:
            sigma = max(POWER_MONITOR_NOISE_FLOOR_MW, POWER_MONITOR_NOISE_FRACTION * true_mw)
            reading = true_mw * (1.0 + i.monitor_error[c]) + self._rng.gauss(0.0, sigma)
            self.output_power_mw[c] = min(0xFFFF, max(0, round(reading)))
            base = BACK_REFLECTION_BROKEN_PERMILLE if i.fibre[c] is Fibre.BROKEN else BACK_REFLECTION_INTACT_PERMILLE
            self.back_reflection_permille[c] = max(0, round(base + self._rng.gauss(0.0, BACK_REFLECTION_NOISE_PERMILLE)))
        else:
            self.output_power_mw[c] = 0
            self.back_reflection_permille[c] = 0
        # counters integrate the photodiode reading, as the datasheet says
        self.energy_mj[c] = min(float(0xFFFF_FFFF), self.energy_mj[c] + self.output_power_mw[c] * dt_s)
        if self.output_power_mw[c] > 0:
            self.emission_time_ms[c] = min(float(0xFFFF_FFFF), self.emission_time_ms[c] + dt_s * 1000.0)
        if i.fibre[c] is Fibre.CONNECTED:
            self.true_tip_energy_j[c] += self.true_output_mw[c] / 1000.0 * dt_s
        self._update_diode(c, dt_s)
        if true_mw > 0 and self.back_reflection_permille[c] > P.FIBRE_FAULT_BACK_REFLECTION_PERMILLE:
            self._latch(P.FaultCode.FIBRE_FAULT, c)
            return
        self._update_deviation(c, dt_s)

    def _update_diode(self, c: int, dt_s: float) -> None:
        if self.inputs.cooling_ok[c]:
            target = DIODE_COOLED_TEMP_C + DIODE_COOLED_C_PER_W * self.true_output_mw[c] / 1000.0
        else:
            target = DIODE_UNCOOLED_TEMP_C + DIODE_UNCOOLED_C_PER_W * self.true_output_mw[c] / 1000.0
        self.diode_temp_c[c] += (1.0 - math.exp(-dt_s / DIODE_TAU_S)) * (target - self.diode_temp_c[c])

    def _update_deviation(self, c: int, dt_s: float) -> None:
        active = self.active_setpoint_mw[c]
        if active >= P.POWER_DEVIATION_MIN_SETPOINT_MW and abs(self.output_power_mw[c] - active) > P.POWER_DEVIATION_FRACTION * active:
            self._deviation_s[c] += dt_s
            if self._deviation_s[c] > P.POWER_DEVIATION_PERSIST_MS / 1000.0 + 1e-9:
                self._latch(P.FaultCode.POWER_DEVIATION, c)
        else:
            self._deviation_s[c] = 0.0

    # --- registers -----------------------------------------------------------------------

    def channel_status(self, c: int) -> P.ChannelStatus:
        s = P.ChannelStatus(0)
        if self.holding["CH_ENABLE"][c]:
            s |= P.ChannelStatus.ENABLED
        if self.output_power_mw[c] > 0 or self.true_output_mw[c] > 0:
            s |= P.ChannelStatus.EMITTING
        if self.inputs.fibre[c] is not Fibre.DISCONNECTED:
            s |= P.ChannelStatus.FIBRE_CONNECTED
        if self.inputs.fibre[c] is Fibre.BROKEN or (self.fault_code == P.FaultCode.FIBRE_FAULT and self.fault_channel == c):
            s |= P.ChannelStatus.FIBRE_FAULT
        if self.diode_temp_c[c] > P.DIODE_OVERTEMP_CENTI_C / 100.0 or (self.fault_code == P.FaultCode.DIODE_OVERTEMP and self.fault_channel == c):
            s |= P.ChannelStatus.DIODE_OVERTEMP
        if self._deviation_s[c] > 0 or (self.fault_code == P.FaultCode.POWER_DEVIATION and self.fault_channel == c):
            s |= P.ChannelStatus.POWER_DEVIATION
        if self.at_limit[c]:
            s |= P.ChannelStatus.AT_LIMIT
        return s

    def interlocks(self) -> P.Interlocks:
        i = self.inputs
        flags = P.Interlocks(0)
        if i.key_on:
            flags |= P.Interlocks.KEY_ON
        if i.estop_pressed:
            flags |= P.Interlocks.ESTOP_PRESSED
        if i.interlock_open:
            flags |= P.Interlocks.REMOTE_INTERLOCK_OPEN
        if i.footswitch_pressed:
            flags |= P.Interlocks.FOOTSWITCH_PRESSED
        if P.Control.AIMING_BEAM in self.control and i.key_on and not i.estop_pressed and self.state is not P.DeviceState.FAULT:
            flags |= P.Interlocks.AIMING_BEAM_ON
        if self.state in (P.DeviceState.ARMED, P.DeviceState.EMITTING):
            flags |= P.Interlocks.EMISSION_INDICATOR_ON
        return flags

    def input_values(self) -> dict[str, object]:
        n = range(P.CHANNEL_COUNT)
        return {
            "DEVICE_STATE": int(self.state),
            "MAP_VERSION": self.inputs.map_version,
            "FIRMWARE_VERSION": self.inputs.firmware_version,
            "INTERLOCKS": int(self.interlocks()),
            "FAULT_CODE": int(self.fault_code),
            "FAULT_CHANNEL": P.FAULT_CHANNEL_NONE if self.fault_channel is None else self.fault_channel,
            "HEARTBEAT_ECHO": self.heartbeat_echo,
            "WATCHDOG_REMAINING": self.watchdog_remaining_ms(),
            "UPTIME": int(self.uptime_s * 1000.0) & 0xFFFF_FFFF,
            "CABINET_TEMP": round(CABINET_TEMP_C * 10),
            "CH_STATUS": tuple(int(self.channel_status(c)) for c in n),
            "OUTPUT_POWER": tuple(self.output_power_mw),
            "ACTIVE_SETPOINT": tuple(min(0xFFFF, round(a)) for a in self.active_setpoint_mw),
            "BACK_REFLECTION": tuple(self.back_reflection_permille),
            "DIODE_TEMP": tuple(round(t * 100) for t in self.diode_temp_c),
            "ENERGY": tuple(int(e) for e in self.energy_mj),
            "EMISSION_TIME": tuple(int(t) for t in self.emission_time_ms),
        }

    def input_words(self) -> list[int]:
        return encode_block(P.REGISTER_MAP, Table.INPUT, self.input_values())

    def holding_words(self) -> list[int]:
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.holding.items()}
        values["COMMAND"] = 0  # always reads 0
        return encode_block(P.REGISTER_MAP, Table.HOLDING, values)

    def write_holding(self, address: int, values: list[int]) -> ExceptionCode | None:
        current = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.holding.items()}
        if (code := check_values(P.REGISTER_MAP, address, values, current)) is not None:
            return code
        updates = writes_by_row(P.REGISTER_MAP, address, values)
        if (code := self._check_busy(updates)) is not None:
            return code
        self._apply(updates)
        return None

    def _check_busy(self, updates: dict[str, dict[int, int]]) -> ExceptionCode | None:
        state = self.state
        armed = state in (P.DeviceState.ARMED, P.DeviceState.EMITTING)
        busy = ExceptionCode.SERVER_DEVICE_BUSY
        for c in updates.get("POWER_LIMIT", {}):
            if self.output_power_mw[c] > 0 or self.true_output_mw[c] > 0 or self.channel_emits(c):
                return busy
        if "WATCHDOG_TIMEOUT" in updates and armed:
            return busy
        command = updates.get("COMMAND", {}).get(0, 0)
        if command == P.Command.ENERGY_RESET and armed:
            return busy
        if command == P.Command.FAULT_RESET and self.fault_code != P.FaultCode.NONE and self._fault_cause_present():
            return busy
        return None

    def _apply(self, updates: dict[str, dict[int, int]]) -> None:
        """Apply an accepted write; rows are applied in address order, as one request."""
        state_before = self.state
        for name, elements in updates.items():
            if name == "COMMAND":
                continue
            if name == "HEARTBEAT":
                value = elements[0]
                if value != self.holding["HEARTBEAT"]:
                    self._last_heartbeat_change_s = self.uptime_s
                self.holding["HEARTBEAT"] = value
                self.heartbeat_echo = value
                continue
            if name == "CONTROL":
                self._write_control(elements[0], state_before)
                continue
            row = self.holding[name]
            for index, value in elements.items():
                if isinstance(row, list):
                    row[index] = value
                else:
                    self.holding[name] = value
                if name == "POWER_SETPOINT":
                    self.at_limit[index] = False
            if name == "POWER_LIMIT":
                for index in elements:
                    if self.holding["POWER_SETPOINT"][index] > self.holding["POWER_LIMIT"][index]:
                        self.holding["POWER_SETPOINT"][index] = self.holding["POWER_LIMIT"][index]
                        self.at_limit[index] = True
        command = updates.get("COMMAND", {}).get(0, 0)
        if command == P.Command.FAULT_RESET:
            self.fault_code = P.FaultCode.NONE
            self.fault_channel = None
        elif command == P.Command.ENERGY_RESET:
            n = P.CHANNEL_COUNT
            self.energy_mj = [0.0] * n
            self.emission_time_ms = [0.0] * n
            self._nv_energy_mj = [0.0] * n
            self._nv_emission_time_ms = [0.0] * n
        # emission stops at once (within the 10 ms the datasheet allows) when it is no longer wanted
        for c in range(P.CHANNEL_COUNT):
            if not self.channel_emits(c):
                self.active_setpoint_mw[c] = 0.0
                self.true_output_mw[c] = 0.0
                self.output_power_mw[c] = 0
            elif self.active_setpoint_mw[c] > self.holding["POWER_SETPOINT"][c]:
                self.active_setpoint_mw[c] = float(self.holding["POWER_SETPOINT"][c])

    def _write_control(self, value: int, state_before: P.DeviceState) -> None:
        old = self.control
        new = P.Control(value)
        self.holding["CONTROL"] = int(new)
        if P.Control.HOST_CONTROL in new and P.Control.HOST_CONTROL not in old:
            self._last_heartbeat_change_s = self.uptime_s  # taking control starts the watchdog afresh
        if P.Control.HOST_CONTROL not in new and state_before in (P.DeviceState.ARMED, P.DeviceState.EMITTING):
            self._latch(P.FaultCode.HOST_RELEASED)
            return
        if P.Control.EMISSION_ENABLE in new and P.Control.EMISSION_ENABLE not in old:
            if not self._arming_conditions_met():
                self.holding["CONTROL"] &= ~int(P.Control.EMISSION_ENABLE)
            elif self.inputs.footswitch_pressed:
                # a footswitch already down at arming is ignored until released and pressed again
                self._footswitch_needs_release = True
